"""
Running a Sieve script (RFC 5228) against one message for one recipient.

A script is compiled once (L{compile_script}: parse, then check every
command against the extension that defines it and the script's
`require`), then run any number of times (L{Script.run}), each run
giving the list of actions to carry out. The run is bounded: at most
L{MAX_STEPS} commands and tests and L{MAX_ACTIONS} actions, so a script
can't make delivery slow; a runtime error or a limit reached ends the run
with L{SieveRuntimeError}, and the caller keeps the message in INBOX
(RFC 5228 2.10.6: implicit keep when the script fails).

Each extension is a module that registers its commands and tests here
with L{command} and L{test}; L{mailplat.sieve.core} has RFC 5228's own.
"""

import importlib
import re

from mailplat.sieve.grammar import Command, SieveSyntaxError, Tag, parse

MAX_STEPS = 100_000  # commands and tests evaluated in one run
MAX_ACTIONS = 128  # actions one run may take (RFC 5228 2.10.5 lets a server refuse more)

MAX_VARIABLE = 4096  # characters a variable holds (RFC 5229 6 lets a server truncate)

# RFC 5229 3: ${name} (identifier with dots for namespaces) or ${digits}.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*|[0-9]+)\}")

COMMANDS = {}  # name -> Spec
TESTS = {}


class SieveRuntimeError(Exception):
    """A run that stopped: the message is kept (implicit keep) and this is logged."""

    def __init__(self, message, line):
        super().__init__(f"line {line}: {message}")
        self.line = line


class OverBudget(SieveRuntimeError):
    """A run that passed a caller's smaller step budget (L{Run.limit}): it may be run again with the whole one."""


class Spec:
    """
    What a command or test accepts, and what runs it.

    `tags` maps each tag it takes to None (a flag) or the kind of its value
    ("string", "string-list", "number"); `exclusive` lists groups of tags
    of which one may appear (match types, address parts); `positional` the
    kinds of its positional arguments in order; `tests` how many tests it
    takes (0, 1, or "list"); `block` whether it has a block; `extension`
    the `require` it needs (None for the base language).
    """

    def __init__(self, name, run, extension=None, tags=None, exclusive=(), positional=(), tests=0, block=False, check=None,
                 optional=0):
        self.name, self.run, self.extension = name, run, extension
        self.optional = optional  # how many of the last positional arguments may be left out
        self.tags = dict(tags or {})
        self.exclusive = [frozenset(g) for g in exclusive]
        self.positional = tuple(positional)
        self.tests, self.block, self.check = tests, block, check


def command(name, **spec):
    def register(run):
        COMMANDS[name] = Spec(name, run, **spec)
        return run

    return register


def test(name, **spec):
    def register(run):
        TESTS[name] = Spec(name, run, **spec)
        return run

    return register


# Tags every comparing test takes (RFC 5228 2.7).
MATCH_TYPES = ("is", "contains", "matches")
COMPARING = {"is": None, "contains": None, "matches": None, "comparator": "string"}

# i;ascii-numeric needs its own require (RFC 4790 9.1, RFC 5228 2.7.3).
COMPARATORS = {"i;octet": None, "i;ascii-casemap": None, "i;ascii-numeric": "comparator-i;ascii-numeric"}


class Node:
    """A checked command or test: spec, tag values, positional values, children."""

    __slots__ = ("spec", "tags", "args", "tests", "block", "line")

    def __init__(self, spec, tags, args, tests, block, line):
        self.spec, self.tags, self.args, self.tests, self.block, self.line = spec, tags, args, tests, block, line


def _kind_of(value):
    if isinstance(value, Tag):
        return "tag"
    if isinstance(value, list):
        return "string-list"
    if isinstance(value, int):
        return "number"
    return "string"


def _fits(value, kind):
    got = _kind_of(value)
    return got == kind or (kind == "string-list" and got == "string")


class _Checker:
    def __init__(self):
        self.required = set()

    def fail(self, message, cmd):
        raise SieveSyntaxError(message, cmd.line, cmd.column)

    def commands(self, cmds, context):
        out = []
        previous = None
        for cmd in cmds:
            if cmd.name == "require":
                # RFC 5228 3.2: only before every other command.
                if context != "top" or (out and out[-1].spec.name != "require"):
                    self.fail("require must come before any other command", cmd)
            if cmd.name in ("elsif", "else") and previous not in ("if", "elsif"):
                self.fail(f"{cmd.name} without if", cmd)
            out.append(self.node(cmd, COMMANDS, "command"))
            previous = cmd.name
        return out

    def node(self, cmd, table, what):
        spec = table.get(cmd.name)
        if spec is None:
            other = COMMANDS if table is TESTS else TESTS
            if cmd.name in other:
                self.fail(f"'{cmd.name}' is a {'command' if other is COMMANDS else 'test'}, not a {what}", cmd)
            self.fail(f"unknown {what} '{cmd.name}'", cmd)
        if spec.extension is not None and spec.extension not in self.required:
            self.fail(f"'{cmd.name}' needs require \"{spec.extension}\"", cmd)
        tags, args = {}, []
        items = cmd.arguments
        if "encoded-character" in self.required:
            items = [_decode_encoded(v) for v in items]
        i = 0
        while i < len(items):
            item = items[i]
            if isinstance(item, Tag):
                if item not in spec.tags:
                    self.fail(f"'{cmd.name}' takes no tag :{item}", cmd)
                if item in tags:
                    self.fail(f"tag :{item} given twice", cmd)
                kind = spec.tags[item]
                if kind is None:
                    tags[item] = True
                else:
                    if i + 1 >= len(items) or not _fits(items[i + 1], kind):
                        self.fail(f"tag :{item} needs a {kind}", cmd)
                    value = items[i + 1]
                    tags[item] = [value] if kind == "string-list" and isinstance(value, str) else value
                    i += 1
            else:
                args.append(item)
            i += 1
        for group in spec.exclusive:
            if len(group & tags.keys()) > 1:
                self.fail(f"only one of {', '.join(':' + t for t in sorted(group))} may be given", cmd)
        if not len(spec.positional) - spec.optional <= len(args) <= len(spec.positional):
            wanted = str(len(spec.positional)) if not spec.optional else f"{len(spec.positional) - spec.optional} to {len(spec.positional)}"
            self.fail(f"'{cmd.name}' takes {wanted} argument(s) besides tags, not {len(args)}", cmd)
        for value, kind in zip(args, spec.positional):
            if not _fits(value, kind):
                self.fail(f"'{cmd.name}' expects a {kind}, not a {_kind_of(value)}", cmd)
        args = [[v] if k == "string-list" and isinstance(v, str) else v for v, k in zip(args, spec.positional)]
        comparator = tags.get("comparator")
        if comparator is not None:
            if comparator not in COMPARATORS:
                self.fail(f"unknown comparator \"{comparator}\"", cmd)
            needs = COMPARATORS[comparator]
            if needs is not None and needs not in self.required:
                self.fail(f"comparator \"{comparator}\" needs require \"{needs}\"", cmd)
        if spec.tests == 0 and cmd.tests:
            first = cmd.tests[0]
            self.fail(f"expected ';' after '{cmd.name}', found '{first.name}' ('{cmd.name}' takes no test)", first)
        if spec.tests == 1 and len(cmd.tests) != 1:
            self.fail(f"'{cmd.name}' takes one test", cmd)
        if spec.tests == "list" and not cmd.tests:
            self.fail(f"'{cmd.name}' takes a list of tests", cmd)
        if spec.block and cmd.block is None:
            self.fail(f"'{cmd.name}' needs a block", cmd)
        if not spec.block and cmd.block is not None:
            self.fail(f"'{cmd.name}' takes no block", cmd)
        tests = [self.node(t, TESTS, "test") for t in cmd.tests]
        block = self.commands(cmd.block, "block") if cmd.block is not None else None
        args = [_literal(v) for v in args]
        tags = {k: _literal(v) for k, v in tags.items()}
        node = Node(spec, tags, args, tests, block, cmd.line)
        if spec.check is not None:
            message = spec.check(node, self)
            if message:
                self.fail(message, cmd)
        return node


class Literals(list):
    """A string list with no `${`: what L{Run.x} gives back as it is, without looking (most lists)."""


def _literal(value):
    if isinstance(value, list) and not any("${" in v for v in value if isinstance(v, str)):
        return Literals(value)
    return value


_ENCODED = re.compile(r"\$\{(hex|unicode):([^}]*)\}", re.I)


def _decode_encoded(value):
    """RFC 5228 2.4.2.4 encoded-character: ${hex:40 41} and ${unicode:1F600} in strings."""
    if isinstance(value, list):
        return [_decode_encoded(v) for v in value]
    if isinstance(value, Tag) or not isinstance(value, str) or "${" not in value:
        return value

    def one(m):
        words = m.group(2).split()
        if not words or not all(all(c in "0123456789abcdefABCDEF" for c in w) for w in words):
            return m.group(0)  # not an encoding: left as written (2.4.2.4)
        if m.group(1).lower() == "hex":
            try:
                return bytes(int(w, 16) for w in words).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return m.group(0)
        try:
            return "".join(chr(int(w, 16)) for w in words)
        except (ValueError, OverflowError):
            return m.group(0)

    return _ENCODED.sub(one, value)


class Script:
    """A compiled script: run it with L{run}."""

    def __init__(self, nodes, required):
        self.nodes = nodes
        self.required = frozenset(required)

    def run(self, message, environment=None):
        """
        The actions for `message` (a L{mailplat.sieve.message.SieveMessage}).

        @return: a L{Run} whose `actions` are the explicit actions in order
            and `implicit_keep` tells whether the message is kept as well.
        @raise SieveRuntimeError: the run failed; keep the message.
        """
        run = Run(message, environment or {}, self.required)
        self.run_in(run)
        return run

    def run_in(self, run):
        """
        Run this script inside `run` (the next of a chain: [sieve] before,
        the user's, after), sharing its actions and implicit keep; its own
        variables start empty. True when it ended with `stop`, which ends
        the chain too.
        """
        saved = run.variables, run.expanding, run.declared
        run.variables, run.expanding, run.declared = {}, "variables" in self.required, set()
        try:
            run.block(self.nodes)
        except Stop:
            return True
        except Return:
            pass  # RFC 6609 3.2: return at the top ends the script only
        finally:
            run.variables, run.expanding, run.declared = saved
        return False


class Stop(Exception):
    pass


class Return(Exception):
    pass


_Stop = Stop


class Run:
    """One run's state: the message, the actions so far, the budget."""

    def __init__(self, message, environment, required=frozenset()):
        self.message = message
        self.environment = environment
        self.actions = []
        self.implicit_keep = True
        self.steps = 0
        self.flags = []  # imap4flags' internal variable (RFC 5232 3)
        self.variables = {}  # RFC 5229: names lowercased
        self.match = []  # ${0} .. ${9} of the last :matches that matched
        self.expanding = "variables" in required
        self.declared = set()  # names this script declared `global` (RFC 6609 4)
        self.globals = {}  # the values of global variables, shared by included scripts
        self.included = set()  # scripts already included with :once
        self.depth = 0  # include nesting
        self.limit = MAX_STEPS  # a caller may set a smaller budget (L{OverBudget} past it)

    def x(self, value):
        """A string argument as the command sees it: with ${...} substituted under variables (RFC 5229 3)."""
        if not self.expanding or isinstance(value, int):
            return value
        if isinstance(value, list):
            if value.__class__ is Literals:
                return value
            return [self.x(v) for v in value]
        if "${" not in value:
            return value
        return _VARIABLE.sub(self._value_of, value)

    def _value_of(self, m):
        name = m.group(1)
        if name.isdigit():
            n = int(name)
            return self.match[n] if n < len(self.match) else ""
        return self.get_variable(name)

    def get_variable(self, name):
        name = name.lower()
        if name.startswith("global."):
            return self.globals.get(name[len("global."):], "")
        if name in self.declared:
            return self.globals.get(name, "")
        return self.variables.get(name, "")

    def set_variable(self, name, value):
        name = name.lower()
        if name.startswith("global."):
            self.globals[name[len("global."):]] = value
        elif name in self.declared:
            self.globals[name] = value
        else:
            self.variables[name] = value

    def matched(self, groups):
        if self.expanding:
            self.match = groups[:10]

    def step(self, node):
        self.steps += 1
        if self.steps > self.limit:
            if self.limit < MAX_STEPS:
                raise OverBudget(f"more than {self.limit} steps", node.line)
            raise SieveRuntimeError(f"more than {MAX_STEPS} steps", node.line)

    def block(self, nodes):
        skipping = False  # an if/elsif taken: skip the elsif/else that follow
        for node in nodes:
            name = node.spec.name
            if name in ("elsif", "else"):
                if skipping:
                    continue
            elif name == "if":
                skipping = False
            self.step(node)
            taken = node.spec.run(self, node)
            if name in ("if", "elsif"):
                skipping = bool(taken)
            elif name == "else":
                skipping = True

    def evaluate(self, node):
        self.step(node)
        return bool(node.spec.run(self, node))

    def stop(self):
        raise _Stop()

    def add(self, action, node, cancels_keep=True):
        """Record an action; an equal one already taken is not taken twice (RFC 5228 2.10.3)."""
        if action not in self.actions:
            if len(self.actions) >= MAX_ACTIONS:
                raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions", node.line)
            self.actions.append(action)
        if cancels_keep:
            self.implicit_keep = False


def compile_script(text):
    """
    Parse and check a script.

    @raise SieveSyntaxError: with line and column, for syntax errors,
        unknown commands, missing `require`s and bad arguments alike.
    """
    for module in ("core", "variables", "vacation", "dates", "duplicate", "include", "editheader", "spamtest"):
        importlib.import_module("mailplat.sieve." + module)  # each registers its commands and tests

    tree = parse(text)
    checker = _Checker()
    for cmd in tree:
        if cmd.name != "require":
            break
        names = cmd.arguments[0] if cmd.arguments and isinstance(cmd.arguments[0], list) else cmd.arguments[:1]
        for name in names:
            if not isinstance(name, str) or isinstance(name, Tag) or name not in EXTENSIONS:
                raise SieveSyntaxError(f"unsupported extension {name!r} in require", cmd.line, cmd.column)
            checker.required.add(name)
    nodes = checker.commands(tree, "top")
    return Script(nodes, checker.required)


# Every extension this interpreter knows, in the order ManageSieve's SIEVE capability lists them.
EXTENSIONS = []


def extension(name):
    """Declare an extension `require` accepts (called by the module that implements it)."""
    if name not in EXTENSIONS:
        EXTENSIONS.append(name)


__all__ = ["Command", "SieveSyntaxError", "SieveRuntimeError", "compile_script", "command", "test", "extension"]
