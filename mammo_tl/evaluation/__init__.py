from .evaluators import PatientEvaluator
from .metrics import froc, paired_difference, patient_metrics

__all__ = ["PatientEvaluator", "patient_metrics", "paired_difference", "froc"]
