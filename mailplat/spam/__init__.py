"""
Spam defence checks (docs/check-dnsbl.md, docs/check-greylist.md,
docs/check-rspamd.md): the code behind the check plugins of
plugins/mailplat_spam.py. Importing a module here starts nothing.
"""
