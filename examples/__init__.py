"""Example workflows and the Python tasks they import (``python: examples.tasks:...``)."""
