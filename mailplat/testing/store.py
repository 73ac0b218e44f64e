"""
Store conformance (IMailStore, IFolderStore, IMailAccount, IMailFolder):
UID order and persistence, flags, folders, append/copy/move/expunge, change
notifications. Written by the store's developers; it follows the shape of
mailplat.testing.realm and mailplat.testing.delivery: a mixin class
(`StoreConformance`) with a `make_store()` factory hook that a plugin author
implements, exported from mailplat.testing.
"""
