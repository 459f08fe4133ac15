"""Semantic segmentation background: resampling layers, metrics, models (FCN, U-Net, generative), their training and transfer learning."""
