"""Defect synthesis for the positive bank: SDXL inpainting (the paper) and a CPU paste baseline.

Modules, one job each: ``plan`` (the deterministic sample plan), ``diffmask`` (positive-patch
mask from the original/generated difference), ``sdxl`` (loading and running the diffusers
SDXL inpainting pipeline), ``paste`` (Poisson-blended paste of real defects), ``writer``
(atomic NNNNN.png / NNNNN_GT.png / NNNNN.json outputs), ``run`` (the resumable loop).
"""
