"""fedvpa-secure: FedVPA-GP personalised reward models over a secure, private federation."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``fedvpa_secure.RewardModel`` without importing torch for every subcommand."""
    if name in ("RewardModel", "Profile", "ContextPair"):
        from fedvpa_secure import reward_model

        return getattr(reward_model, name)
    raise AttributeError(f"module 'fedvpa_secure' has no attribute {name!r}")
