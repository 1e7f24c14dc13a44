"""``clipdehaze-reproduce``: reproduce the papers' tables and prove the training loop equal to upstream's.

* ``clipdehaze-reproduce trajectory FILE`` replays a recorded upstream training trajectory through
  :class:`clipdehaze.lit_module.DehazeLitModule` (:mod:`clipdehaze.reproduce.trajectory`);
* ``clipdehaze-reproduce <paper> --table <table>`` launches (or, given weights, scores) every row of one paper table
  from its recipe table and renders it beside the published numbers (:mod:`clipdehaze.reproduce.tables`).
"""
