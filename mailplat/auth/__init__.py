"""
Mail authentication: DKIM signing on submission (dkim_keys, dkim_sign);
on the MX, SPF (spf), DKIM (dkim_verify) and DMARC (dmarc) checks over the
server's resolver (lookups), the Authentication-Results field (results),
and the delivery wrapper that applies the policy (verify). ARC comes later.
"""
