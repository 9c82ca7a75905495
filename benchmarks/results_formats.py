"""Number formats of docs/results.md (fixed, so the page is reproducible); shared by
``results_page.py`` and ``results_studies.py``."""


def _acc(value):
    return "-" if value is None else f"{value:.4f}"


def _rate(value):
    return "-" if value is None else f"{value:.3f}"


def _pct(value, digits=1):
    return "-" if value is None else f"{100.0 * value:.{digits}f}%"


def _macs(value):
    if value is None:
        return "-"
    if value >= 1e9:
        return f"{value / 1e9:.2f}G"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}K"


def _ms(value):
    return f"{value:.3f} ms"


def _ratio(value):
    return f"{value:.3f}x"


def _met(flag):
    return {True: "met", False: "not met"}.get(flag, "-")


def _score(value):
    return f"{value:.3g}"
