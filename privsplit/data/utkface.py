"""placeholder: written by the data-loader work."""
