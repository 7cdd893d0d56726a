"""Label values shared by what records the serving metrics and what exports them."""

NO_ADAPTER = "none"
"""``adapter`` label of predictions made by a base model alone."""
OTHER_ADAPTER = "_other"
"""``adapter`` label of predictions beyond ``METRICS_ADAPTER_LABELS`` distinct adapters."""
