"""RFC 6154 special-use folders, as every store makes and names them."""

# Made for every new account, named as most clients expect.
SPECIAL_USE = (
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
# Every attribute a folder may carry, by its lower-case spelling.
SPECIAL_USE_ATTRIBUTES = {a.lower(): a for _, a in SPECIAL_USE} | {"\\all": "\\All", "\\flagged": "\\Flagged"}
