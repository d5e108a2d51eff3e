"""flapguard: de-duplicated AWS Security Hub CSPM notifications."""

__version__ = "0.1.0"
