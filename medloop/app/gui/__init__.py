"""The only Qt code outside plugins: launcher, home panel, shared widgets."""
