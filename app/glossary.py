"""The app's words and colours, in one place: every technical term has a plain-language label and
a tooltip, and every class has one colour in every view.

Use `label(key)` for a column header, axis title or field name and `help_text(key)` for the
tooltip (`help=` of a widget, `st.column_config.*(help=...)`, an Altair axis title's tooltip).
The Glossary expander of the sidebar (`glossary_ui`) lists them all. Add a term here, not in a view.
"""

from __future__ import annotations

from typing import NamedTuple

import altair as alt
import streamlit as st


class Term(NamedTuple):
    label: str  # what a dermatologist reads
    help: str  # one or two sentences: what it is, how to read it


TERMS: dict[str, Term] = {
    "weight": Term(
        "model difficulty (LOW weight)",
        "How much this image counted in training, chosen at every step by LOW: 1 is an average image; "
        "above 1 the model found it hard (atypical, ambiguous, or possibly mislabeled); near 0 easy."),
    "weight_mean": Term(
        "average difficulty (mean LOW weight)",
        "The LOW weight averaged over the epochs (passes over the training images) so far."),
    "weight_above1": Term(
        "share of epochs found hard",
        "In what share of the passes over the training images this image got a weight above 1 (harder than average)."),
    "confidence": Term("model's confidence", "The probability the model gave to a class (0 to 1)."),
    "p_given": Term(
        "model's confidence in the given label",
        "The probability the model gave to the label in the dataset (0 to 1)."),
    "other_label": Term(
        "most likely other label",
        "The class, other than the given label, that the model found most likely for this image."),
    "other_prob": Term(
        "model's confidence in the most likely other label",
        "The probability the model gave to the most likely other label (0 to 1)."),
    "flag_score": Term(
        "possible-mislabel score",
        "How strongly the training record suggests that the given label is wrong: high when the model "
        "kept preferring another label and LOW kept weighting the image up. Ranked 1 = most suspicious."),
    "rank": Term("suspicion rank", "1 is the image most likely to be mislabeled (by the possible-mislabel score)."),
    "epoch": Term("epoch (training pass)", "One pass of training over every training image."),
    "misclassified": Term(
        "share of epochs misclassified",
        "In what share of the training passes the model's top class differed from the given label."),
    "predicted": Term("model's prediction", "The class the model found most likely."),
    "given": Term("given label", "The label in the dataset's ground-truth file (or as relabeled by review)."),
    "dx_type": Term(
        "diagnosis confirmed by",
        "How the dataset's label was established: histopathology, follow-up, expert consensus, or confocal "
        "microscopy (HAM10000 / ISIC 2018 `dx_type`)."),
    "recall": Term("sensitivity (recall)", "Of the images of this class, the share the model found."),
    "precision": Term("precision (PPV)", "Of the images the model called this class, the share that were."),
    "specificity": Term("specificity", "Of the images of other classes, the share not called this class."),
    "auc": Term("AUC", "Area under the ROC curve: 100 % separates the class perfectly, 50 % is chance."),
    "support": Term("images", "How many images of this class the split holds."),
    "bacc": Term("balanced accuracy", "Sensitivity averaged over the classes: every class counts the same."),
    "acc": Term("accuracy", "Share of images classified correctly (dominated by the commonest class)."),
    "mauc": Term("mean AUC", "AUC averaged over the classes."),
    "f1": Term("F1", "The harmonic mean of sensitivity and precision: high only when both are."),
    "mf1": Term("mean F1", "F1 (the harmonic mean of sensitivity and precision) averaged over the classes."),
    "ece": Term(
        "calibration error (ECE)",
        "How far the stated confidence is from the observed accuracy, averaged over 15 confidence bins; 0 is perfect."),
    "ci": Term("95 % interval", "Bootstrap 95 % confidence interval: test images resampled 1,000 times (seeded)."),
    "baseline": Term("baseline", "The run (or setup) the others are compared with: differences are other − baseline."),
    "diff": Term(
        "difference to the baseline",
        "In % points, with a paired bootstrap 95 % interval (the same resampled test images for both): an "
        "interval that excludes 0 means the difference is unlikely to be chance in the choice of test images."),
    "cell": Term(
        "confusion-matrix cell",
        "The images with this given label (row) that the model called this class (column). Click a cell to list them."),
    "operating_point": Term(
        "operating point",
        "The threshold on the class's probability chosen on the validation images for ≥ 90 % specificity; "
        "the marker shows where it falls on the ROC curve."),
    "seeds": Term("seeds", "Repeats of the same setup with another random start; more seeds, surer comparisons."),
    "lesion": Term("lesion", "One skin lesion; the dataset may hold several images of it (HAM10000 `lesion_id`)."),
    "blind": Term(
        "blind review",
        "Hides the model's prediction, the most likely other label, how the label arose (e.g. a deliberate "
        "flip in a study run) and the other reviewers' decisions until you have saved yours."),
    "split": Term("split", "Training, validation (used to choose the epoch and thresholds) or test (reported)."),
    "lambda": Term("λ (LOW's regularisation)", "Larger λ keeps LOW's weights closer to 1."),
    "no_low": Term(
        "this run did not use LOW: no difficulty weights",
        "Its training gave every image the same weight (or weights of another method), so the views "
        "show no model difficulty for it."),
    "loss": Term("training loss", "How wrong the model was on this image's given label in that training pass (0 = right and sure)."),
    "siblings": Term(
        "other images of this lesion",
        "Further images of the same skin lesion in the dataset (same lesion id); they should carry the same label."),
    "lesion_conflict": Term(
        "images of one lesion with different labels",
        "Two images of the same lesion cannot have different diagnoses: one of the labels is probably wrong."),
    "lesion_wide": Term(
        "apply to the whole lesion",
        "Records the same decision, under your name, for every training image of this lesion (one decision "
        "per image, noted as applied lesion-wide). Validation and test images are never changed."),
    "held_out": Term(
        "held-out image",
        "A validation or test image: the model was not trained on it, so it has no training history and is not reviewed here."),
}

DX_TYPES: dict[str, str] = {
    "histo": "histopathology",
    "follow_up": "follow-up",
    "consensus": "expert consensus",
    "confocal": "confocal microscopy",
}
"""HAM10000's `dx_type` codes spelled out; ISIC 2018's `diagnosis_confirm_type` is already in words."""


def dx_type_text(value: object) -> str:
    """How a label was confirmed, in words: a known code spelled out, anything else as given
    (it comes from a file: escape it with `md()` before showing it in Markdown)."""
    text = "" if value is None else str(value).strip()
    return DX_TYPES.get(text.lower(), text)

CLASS_COLOURS = ("#D55E00", "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
"""Okabe & Ito's colour-blind-safe palette, most distinct first (vermillion, blue, orange, green,
purple, sky blue, black; yellow last, weak on white). ISIC's 7 classes in their usual order get
MEL vermillion, NV blue, BCC orange, AKIEC green, BKL purple, DF sky blue, VASC black."""


def label(key: str) -> str:
    """The plain-language label of a term (KeyError for an unknown key: add it to TERMS)."""
    return TERMS[key].label


def title(key: str) -> str:
    """The label with its first letter capitalised, for the start of a line or a heading."""
    text = label(key)
    return text[:1].upper() + text[1:]


def help_text(key: str) -> str:
    """The tooltip of a term."""
    return TERMS[key].help


def class_scale(codes: list[str]) -> alt.Scale:
    """The colour scale of classes `codes` (in the run's class order): the same colour for the same
    class in every view; more than 8 classes (CIFAR-100) fall back to a 20-colour scheme."""
    if len(codes) <= len(CLASS_COLOURS):
        return alt.Scale(domain=list(codes), range=list(CLASS_COLOURS[: len(codes)]))
    return alt.Scale(domain=list(codes), scheme="tableau20")


def glossary_ui() -> None:
    """Every term, its plain-language label and meaning, in a sidebar expander."""
    with st.sidebar.expander("Glossary"):
        for term in TERMS.values():
            st.markdown(f"**{term.label}**: {term.help}")
