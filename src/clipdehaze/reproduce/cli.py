"""``clipdehaze-reproduce``'s entry point: the first argument picks the job, the rest are its own arguments."""

from __future__ import annotations

import sys

USAGE = """usage: clipdehaze-reproduce trajectory FILE [options]     replay a recorded upstream training run
       clipdehaze-reproduce PAPER --table TABLE [options]   run, score or render one paper table
       clipdehaze-reproduce PAPER --list                    the paper's tables and their rows
Each form's own --help lists its options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job == "trajectory":
        from clipdehaze.reproduce.trajectory import main as trajectory_main

        return trajectory_main(rest)
    from clipdehaze.reproduce.tables import main as tables_main

    return tables_main(job, rest)


if __name__ == "__main__":
    sys.exit(main())
