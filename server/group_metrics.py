"""Per-group output metrics (issue 5). Placeholder API until the observability work lands:
the serving layer calls these once per request and once per finished choice."""


def observe_request(model: str, adapter: str | None, strength: float) -> None:
    pass


def observe_completion(model: str, adapter: str | None, strength: float, text: str) -> None:
    pass
