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

BTAD_LAYOUT = """\
  <root>/<01|02|03>/train/ok/*.bmp|png
  <root>/<01|02|03>/test/ok/*.bmp|png
  <root>/<01|02|03>/test/ko/*.bmp|png
  <root>/<01|02|03>/ground_truth/ko/<image stem>.png|bmp
  (<root> may also be the folder that holds btad/)"""

DTD_LAYOUT = """\
  <root>/<texture, e.g. Woven_001>/train/good/*.png
  <root>/<texture>/test/good/*.png
  <root>/<texture>/test/bad/*.png
  <root>/<texture>/ground_truth/bad/<image stem>_mask.png
  (<root> may also be the folder that holds DTD-Synthetic/)"""

DAGM_LAYOUT = """\
  <root>/Class<N>/Train/*.PNG, <root>/Class<N>/Train/Label/<image stem>_label.PNG
  <root>/Class<N>/Test/*.PNG,  <root>/Class<N>/Test/Label/<image stem>_label.PNG
  (an image with a label image is defective; <root> may also hold DAGM_KaggleUpload/)"""


def _guide(what: str, steps: str, name: str) -> str:
    return (
        f"{what}\n{steps}\n  Then check it with:  ad data check --dataset {name} --data-root R\n"
        "  R may be the data set's own folder or the folder that holds it under the name the\n"
        "  AF-CLIP authors' readers use (btad, DAGM_KaggleUpload, DTD-Synthetic, BrainMRI,\n"
        "  Br35H, ISIC2016, CVC-ColonDB, CVC-ClinicDB, Kvasir), so one R serves them all."
    )


POLYP_STEPS = """\
  1. Download PraNet's test set (TestDataset.zip, linked from the README of
     github.com/DengPingFan/PraNet), which holds CVC-ColonDB/, CVC-ClinicDB/ and Kvasir/, each
     with images/*.png and masks/*.png: the copies the AF-CLIP authors evaluate on.
  2. Unpack it and pass the folder that holds CVC-ColonDB/, CVC-ClinicDB/ and Kvasir/ as R."""

DOWNLOAD_HELP = {
    "btad": _guide(
        "BTAD (beanTech Anomaly Detection) is one zip from its authors;\n"
        "`ad data download btad --to R/btad` fetches, verifies and unpacks it. By hand:",
        "  1. Download avires.dimi.uniud.it/papers/btad/btad.zip and move the three folders of\n"
        "     its BTech_Dataset_transformed/ into R, so that R holds 01/, 02/ and 03/.\n"
        f"  2. The layout ad reads is the archive's own:\n{BTAD_LAYOUT}",
        "btad",
    ),
    "dagm": _guide(
        "DAGM 2007 is free for non-commercial research; its Kaggle upload needs a Kaggle\n"
        "account and the acceptance of its terms, so ad cannot fetch it for you:",
        "  1. Download kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-\n"
        "     inspection (folder DAGM_KaggleUpload) and unpack it into R.\n"
        f"  2. The layout ad reads:\n{DAGM_LAYOUT}",
        "dagm",
    ),
    "dtd": _guide(
        "DTD-Synthetic (Aota et al., WACV 2023: defects pasted onto DTD textures) is released\n"
        "by its authors; ad does not fetch it:",
        "  1. Download DTD-Synthetic from its authors' release (the Google Drive folder\n"
        "     drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1 that zero-shot\n"
        "     anomaly detection code links) and unpack it into R.\n"
        f"  2. The layout ad reads:\n{DTD_LAYOUT}",
        "dtd",
    ),
    "brainmri": _guide(
        "BrainMRI is the Kaggle set 'Brain MRI Images for Brain Tumor Detection'\n"
        "(navoneel/brain-mri-images-for-brain-tumor-detection); Kaggle needs an account:",
        "  1. Download it from Kaggle and unpack it into R/BrainMRI (or R), so that it holds\n"
        "     no/ (98 normal scans) and yes/ (155 with a tumour).",
        "brainmri",
    ),
    "br35h": _guide(
        "Br35H ('Br35H :: Brain Tumor Detection 2020') is a Kaggle set; Kaggle needs an account:",
        "  1. Download it from Kaggle and unpack it into R/Br35H (or R), so that it holds no/ and\n"
        "     yes/ (1500 jpg each); its unlabelled pred/ folder is not used.",
        "br35h",
    ),
    "isic": _guide(
        "ISIC 2016 (challenge task 1, lesion segmentation) is published on the ISIC challenge\n"
        "site, challenge.isic-archive.com/data; `ad data download isic --to R/ISIC2016` fetches\n"
        "and verifies both archives. By hand:",
        "  1. Download the task 1 test data (ISBI2016_ISIC_Part1_Test_Data.zip, 379 images) and\n"
        "     its ground truth (ISBI2016_ISIC_Part1_Test_GroundTruth.zip).\n"
        "  2. Unzip both into R/ISIC2016 (or R): ISBI2016_ISIC_Part1_Test_Data/*.jpg and\n"
        "     ISBI2016_ISIC_Part1_Test_GroundTruth/<image stem>_Segmentation.png.",
        "isic",
    ),
    "colondb": _guide(
        "CVC-ColonDB (380 colonoscopy frames with polyp masks):", POLYP_STEPS, "colondb"
    ),
    "clinicdb": _guide(
        "CVC-ClinicDB (612 colonoscopy frames with polyp masks):", POLYP_STEPS, "clinicdb"
    ),
    "kvasir": _guide(
        "Kvasir-SEG (polyp images with masks; PraNet's 100-image test split):",
        POLYP_STEPS,
        "kvasir",
    ),
}
