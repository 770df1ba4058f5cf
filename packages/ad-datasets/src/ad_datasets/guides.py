"""Texts shown to users: the layouts the readers expect and how to obtain MVTec-AD."""

from __future__ import annotations

MVTEC_LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/test/good/*.png
  <root>/<category>/test/<defect>/*.png
  <root>/<category>/ground_truth/<defect>/<image stem>_mask.png"""

MVTEC_DOWNLOAD_HELP = f"""\
MVTec-AD is free for non-commercial use under CC BY-NC-SA 4.0, and its licence must be
accepted on its site before downloading, so ad cannot fetch it for you:

  1. Open https://www.mvtec.com/company/research/datasets/mvtec-ad/downloads, accept the
     licence and download mvtec_anomaly_detection.tar.xz (about 4.9 GB).
  2. Unpack it:  mkdir -p R && tar -xJf mvtec_anomaly_detection.tar.xz -C R
  3. Run with --data-root R. The layout ad reads is the one in the archive:
{MVTEC_LAYOUT}
     with the 15 categories bottle, cable, capsule, carpet, grid, hazelnut, leather,
     metal_nut, pill, screw, tile, toothbrush, transistor, wood, zipper.
  4. Check it with:  ad data check --dataset mvtec --data-root R"""
