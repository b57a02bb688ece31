"""fedvpa-secure: FedVPA-GP personalised reward models over a secure, private federation."""

__version__ = "0.1.0"
