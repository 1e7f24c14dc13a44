"""Renderers shared by ``clipdehaze-table`` and ``clipdehaze-compare``: one set of number formatters
(:mod:`.numbers`), a small document model both tools fill (:mod:`.document`), and one module per output format
(:mod:`.markdown`, :mod:`.csv`, :mod:`.latex`, :mod:`.html`, :mod:`.plots`). Every renderer treats run names,
labels, paths and sources as untrusted text and escapes them for its format."""
