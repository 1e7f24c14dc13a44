"""``clipdehaze-data clip-cache data=... clip=... [model=...]``: precompute per-image CLIP outputs.

Takes the same Hydra overrides as ``clipdehaze-train`` and fills the cache the training run would use
(``${paths.cache_dir}/clip``): one safetensors entry per input image keyed by its content hash, the CLIP model
id and the prompt sets. Up-to-date entries are reused, stale or corrupt ones rebuilt.
"""

from __future__ import annotations

import argparse
import time

DEFAULT_NAMES = ("text_feature", "image_embedding", "density_map")


def run_clip_cache(overrides: list[str], names: list[str] | None = None) -> dict[str, int]:
    from hydra.utils import instantiate

    from clipdehaze.data.io import load_image
    from clipdehaze.models import clip_inputs_of, create_generator
    from clipdehaze.models.clip import ClipCache
    from clipdehaze.models.clip.cache import CACHEABLE
    from clipdehaze.utils.devices import training_device
    from clipdehaze.utils.hydra_utils import check_override_syntax, compose_config

    check_override_syntax(overrides)
    cfg = compose_config("train", overrides)
    if cfg.get("clip") is None:
        raise SystemExit("clip-cache needs a CLIP config: pass clip=<name> (e.g. clip=tiny_random)")
    if not names:
        explicit_model = any(o.split("=", 1)[0] in ("model", "+model") for o in overrides)
        if explicit_model:
            from clipdehaze.lit_module import architecture_kwargs

            model_kwargs = architecture_kwargs(cfg.model)
            names = [n for n in clip_inputs_of(create_generator(cfg.model.name, **model_kwargs)) if n in CACHEABLE]
        names = names or list(DEFAULT_NAMES)
    # On the device the training run would use: ViT-B/32 over a dataset is GPU work.
    prior = instantiate(cfg.clip).to(training_device(cfg.get("trainer")))
    cache = ClipCache(f"{cfg.paths.cache_dir}/clip", prior, names=names, loader_fn=load_image)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup(None)
    totals: dict[str, int] = {}
    for split, ds in (("train", datamodule.train_set), ("val", datamodule.val_set), ("test", datamodule.test_set)):
        base = getattr(ds, "dataset", ds)
        if base is None:
            continue
        start = time.perf_counter()
        counts = cache.build(base.input_paths())
        print(f"{split:5s} {len(base.input_paths()):6d} images  {counts}  {time.perf_counter() - start:.1f} s")
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    print(f"cache: {cache.root}  prior: {prior.model_id} on {prior.device}  names: {', '.join(cache.names)}")
    return totals


class _HelpWithConfigGroups(argparse.Action):
    """``-h``: the usage plus every config group and its options (composing them takes Hydra's start-up, so only
    when help is asked for)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from clipdehaze.utils.hydra_utils import config_groups

        parser.print_help()
        print("\nConfiguration groups (override with group=option, as for clipdehaze-train):")
        for group, options in config_groups().items():
            print(f"  {group}: {', '.join(options)}")
        parser.exit()


def _add_clip_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clip-cache", help="precompute per-image CLIP outputs for a dataset (Hydra overrides)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("-h", "--help", action=_HelpWithConfigGroups, help="show this help, with the config groups")
    p.add_argument("overrides", nargs="*", help="Hydra overrides as for clipdehaze-train: data=... clip=... model=...")
    p.add_argument("--names", nargs="+", default=None,
                   help="what to cache (default: the model's CLIP inputs, else text_feature image_embedding "
                        "density_map)")
    p.set_defaults(func=lambda args: 0 if run_clip_cache(args.overrides, args.names) is not None else 1)
