"""
include (RFC 6609): `include [:personal / :global] [:once] [:optional] NAME`,
`return`, and `global` variables shared between a script and the ones it
includes.

Scripts are found by the run's `environment["include"]`, a function
(name, "personal" | "global") -> compiled Script or None; the filter
gives one reading `<home>/sieve/NAME.sieve` and `[sieve] global_dir`.
Nesting is bounded (L{MAX_DEPTH}); a script that includes itself, directly
or not, reaches the bound and the run fails (the message is kept).
"""

from mailplat.sieve.engine import Return, SieveRuntimeError, command, extension

extension("include")

MAX_DEPTH = 10  # Pigeonhole's sieve_include_max_nesting_depth


def _check_include(node, checker):
    if "personal" in node.tags and "global" in node.tags:
        return "only one of :personal and :global"
    name = node.args[0]
    if not name or "/" in name or name.startswith(".") or any(ord(c) < 32 for c in name):
        return f"include: {name!r} is not a script name"
    return None


@command("include", extension="include", tags={"personal": None, "global": None, "once": None, "optional": None},
         positional=("string",), check=_check_include)
def _include(run, node):
    where = "global" if "global" in node.tags else "personal"
    name = node.args[0]
    key = (where, name)
    if "once" in node.tags and key in run.included:
        return
    loader = run.environment.get("include")
    script = loader(name, where) if loader is not None else None
    if script is None:
        if "optional" in node.tags:
            return  # RFC 6609 3.1: a missing optional script is no error
        raise SieveRuntimeError(f"include: no {where} script {name!r}", node.line)
    if run.depth + 1 > MAX_DEPTH:
        raise SieveRuntimeError(f"include: nested deeper than {MAX_DEPTH} (a loop?)", node.line)
    run.included.add(key)
    run.depth += 1
    try:
        # The included script's own variables start empty; `stop` in it ends everything.
        if script.run_in(run):
            run.stop()
    finally:
        run.depth -= 1


@command("return", extension="include")
def _return(run, node):
    raise Return()


def _check_global(node, checker):
    if "variables" not in checker.required:
        return 'global needs require "variables"'
    return None


@command("global", extension="include", positional=("string-list",), check=_check_global)
def _global(run, node):
    run.declared.update(n.lower() for n in node.args[0])
