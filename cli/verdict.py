"""The one wording of a targets verdict, for `fairsteer eval`'s continuation/coreference and chat tasks."""


def targets_verdict(met: dict[str, bool]) -> str:
    """"all targets met", or "targets NOT met: " and the failed ones, from a {target: passed, "all_met": ...}
    table."""
    if met["all_met"]:
        return "all targets met"
    return "targets NOT met: " + ", ".join(k for k, ok in met.items() if not ok and k != "all_met")
