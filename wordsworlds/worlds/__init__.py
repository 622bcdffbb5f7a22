"""The worlds engines: any Stable-Diffusion-family pipeline one denoising step at a time (diffusion.py),
its cheap latent previews (previews.py), the forward noising process (noising.py), and rendering a
planned layout region by region (layout.py)."""
