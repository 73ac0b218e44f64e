"""
Mail authentication: DKIM signing on submission (dkim_keys, dkim_sign).
Verification of SPF, DKIM, DMARC and ARC on the MX comes later (issue 10).
"""
