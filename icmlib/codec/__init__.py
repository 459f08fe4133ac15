"""The codec itself: transforms and hyperprior (model), rANS (ans), the .icm container (bitstream), the probability model's teaching helpers, the loss terms, the shipped default codec."""
