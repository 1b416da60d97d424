"""rlaif: Constitutional AI / RLAIF as a service. Nothing heavy is imported here."""

__version__ = "0.1.0"
