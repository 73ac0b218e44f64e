"""SMTP: the MX, submission and SMTPS listeners."""
