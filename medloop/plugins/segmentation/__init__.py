"""Run a segmentation model on an image (the Segmentation panel and `medloop segment`)."""
