"""Compositional prompt ensemble (WinCLIP, Jeong et al. CVPR 2023, Sec. 4.1 and appendix).

Every state word is composed with every template; the text embeddings of one state are
averaged into a single class prototype. Counts, as listed in the paper's appendix: 7 normal
states, 4 anomalous states and 21 templates, i.e. 147 normal and 84 anomalous prompts.

The paper's template list starts with "a cropped photo of the [c]." only (no "a" variant)
and has "a jpeg corrupted photo of a [c]." and "... of the [c]." once each; some public
reimplementations list the "the" variant twice instead, which we do not copy.
"""

from __future__ import annotations

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def compose(states: tuple[str, ...], class_name: str) -> list[str]:
    """All state x template sentences for one class name, states outermost."""
    return [template.format(state.format(class_name)) for state in states for template in TEMPLATES]


def prompt_ensemble(class_name: str) -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts) for ``class_name``: 147 and 84 sentences."""
    return compose(NORMAL_STATES, class_name), compose(ANOMALOUS_STATES, class_name)
