"""Plan quality: dose-volume histograms and metrics, gamma, deliverability checks, QA verdict."""
