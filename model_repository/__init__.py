"""Triton model sources: one folder per model (config.pbtxt beside `1/model.py`).

`navig export` copies these folders into a build directory and places the weights there;
the Python modules next to them hold the logic the python-backend models import.
"""
