"""cvm-appliance: the ops engine behind `inv bootstrap`, `inv deploy` and friends."""

__version__ = "0.1.0"
