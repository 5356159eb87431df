"""styleslim: compress neural style transfer models and ship them to phones and edge devices."""

__version__ = "0.1.0"
