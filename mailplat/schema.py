"""
The schema of a plugin's config table: a L{Key} per key (type, default,
required, a line of doc), checked before the plugin is built and printed by
`mailplat plugins --describe`. Types and their names are the config's own
(L{mailplat.config.type_problem}): one validator for the core's tables and
the plugins'.
"""

# A plugin's `keys` saying it reads whatever its section holds (its
# section is then not checked for misspelt keys).
ANY_KEYS = "any"


class SchemaError(ValueError):
    """A table that does not match its schema: "table.key: problem"."""


class Key:
    """
    One key a plugin's table may hold:

        keys={
            "path": Key(str, required=True, doc="the users file, e.g. 'etc/users.json'"),
            "reload": Key(bool, default=True, doc="read the file again when it changes"),
            "lmtp": Key(dict, keys={"endpoint": Key(str, required=True, doc="...")}, doc="..."),
        }

    @param type: what the value must be: str, int, float (a whole number
        will do), bool, list, dict (a sub-table), a tuple of those, or None
        for anything.
    @param default: given to `build` when the key is absent (the table
        `build` receives has it filled in); None gives nothing.
    @param required: the server refuses to start without it.
    @param doc: one line for `mailplat plugins --describe`.
    @param keys: for a sub-table, its own keys (a dict of L{Key}s, or
        names).
    """

    def __init__(self, type=None, default=None, required=False, doc="", keys=None):
        self.type = type
        self.default = default
        self.required = required
        self.doc = doc
        self.keys = keys

    def __repr__(self):
        return f"<Key {self.type} default={self.default!r} required={self.required}>"


def as_schema(declared):
    """A `keys` declaration (names, a dict of None / names / Key) as {name: Key}."""
    if declared is None or declared == ANY_KEYS:
        return declared
    if not isinstance(declared, dict):
        return {name: Key() for name in declared}
    out = {}
    for name, value in declared.items():
        if isinstance(value, Key):
            out[name] = value
        elif value is None:
            out[name] = Key()
        elif value == ANY_KEYS:
            out[name] = Key(dict, keys=ANY_KEYS)
        else:  # the keys of a sub-table
            out[name] = Key(dict, keys=value)
    return out


def check_table(section, table, known):
    """
    Check `section` (the table named `table`, e.g. "realm") against `known`
    ({name: Key}): the first unknown, missing or mistyped key raises
    L{SchemaError} "table.key: problem". @return: a copy with the defaults
    filled in.
    """
    from mailplat.config import type_problem, unknown

    for name in section:
        if name not in known:
            dotted, problem = unknown(table, name, list(known))
            raise SchemaError(f"{dotted}: {problem}")
    out = dict(section)
    for name, key in known.items():
        dotted = f"{table}.{name}"
        if name not in section:
            if key.required:
                raise SchemaError(f"{dotted}: is required" + (f" ({key.doc})" if key.doc else ""))
            if key.default is not None:
                out[name] = key.default
            continue
        value = section[name]
        if key.type is not None:
            problem = type_problem(value, key.type)
            if problem:
                raise SchemaError(f"{dotted}: {problem}")
        sub = as_schema(key.keys)
        if sub is not None and sub != ANY_KEYS and isinstance(value, dict):
            out[name] = check_table(value, dotted, sub)
    return out


def describe_keys(schema, indent="  "):
    """One line per key (and per key of a sub-table, indented): name, type, required or default, doc."""
    from mailplat.config import type_name

    lines = []
    for name, key in schema.items():
        what = type_name(key.type) if key.type is not None else "any value"
        need = "required" if key.required else (f"default {key.default!r}" if key.default is not None else "optional")
        lines.append(f"{indent}{name:<16} {what:<16} {need:<18} {key.doc}".rstrip())
        sub = as_schema(key.keys)
        if isinstance(sub, dict):
            lines += describe_keys(sub, indent + "  ")
    return lines
