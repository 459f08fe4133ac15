"""Data: the synthetic COCO-format world, COCO-format datasets and loaders, downloads, image I/O, drawing."""
