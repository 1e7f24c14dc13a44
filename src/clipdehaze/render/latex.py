"""LaTeX: a ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), every cell plain text
escaped so it typesets as the same characters and can run no command."""

from __future__ import annotations

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "\n": " ", "\r": " ",
            "±": r"$\pm$", "Δ": r"$\Delta$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "×": r"$\times$",
            "†": r"$^\dagger$"}


def latex_escape(text: object) -> str:
    """Plain text -> LaTeX that typesets as the same characters (``cam_density=false``, ``50%``, sources...), on
    one line (a blank line would end the table's paragraph)."""
    return "".join(_SPECIAL.get(c, c) for c in str(text))


def table(caption: str, header: list[str], rows: list[list[object]], rule_before: int | None = None) -> str:
    """The float; ``rule_before``: the index of the row above which a ``\\midrule`` separates a second part."""
    cols = "ll" + "c" * (len(header) - 2)
    out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}",
           f"\\begin{{tabular}}{{{cols}}}", "\\toprule", " & ".join(latex_escape(h) for h in header) + " \\\\",
           "\\midrule"]
    for i, r in enumerate(rows):
        if i == rule_before:
            out.append("\\midrule")
        out.append(" & ".join(latex_escape(c) for c in r) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)
