"""One file per architecture, each with its variant file (``<arch>.yaml``) beside it.

Nothing here imports the architectures: :func:`clipdehaze.models.create_generator` imports the one a variant file
names when a generator of it is first built.
"""
