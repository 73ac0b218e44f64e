"""twistd plugin: `twistd -n mailplat [--config FILE]`."""

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None, "TOML configuration file (default: embedded defaults)"]]


def _log_file(twistd_options):
    """Where twistd would write its log (-l / --logfile, -n), for [log] format = "json"."""
    from twisted.python import logfile

    name = twistd_options.get("logfile") if twistd_options is not None else "-"
    if name == "-" or (not name and twistd_options.get("nodaemon")):
        return sys.stdout
    return logfile.LogFile.fromFullPath(name or "twistd.log")


@implementer(IServiceMaker, IPlugin)
class MailplatServiceMaker:
    tapname = "mailplat"
    description = "mailplat: SMTP, IMAP4 and POP3 over pluggable backends"
    options = Options

    def makeService(self, options):
        from mailplat import config as configuration
        from mailplat import oplog, privileges
        from mailplat.listeners import bind
        from mailplat.service import make_service

        # twistd's own options (-u/-g), when run by twistd.
        twistd = getattr(options, "parent", None)
        try:
            config = configuration.load(options["config"])
            configuration.require_service(config)
            run_as = privileges.resolve(
                config, twistd.get("uid") if twistd is not None else None, twistd.get("gid") if twistd is not None else None
            )
            # Bind first: a port in use stops us before anything is created.
            bound = bind(config)
            try:
                # Then, as the user it runs as ([server] user, twistd -u):
                # state_dir given to it, every file it reads opened once,
                # every file it makes made by it (mailplat.privileges).
                if run_as is not None:
                    privileges.prepare(config, run_as)
                with privileges.acting_as(run_as):
                    privileges.check_readable(config)
                    try:
                        top = make_service(config, bound=bound)
                    except PermissionError as e:
                        raise privileges.permission_problem(config, e)
            except BaseException:
                for port, _ in bound.values():
                    port.stopListening()
                raise
        except configuration.ConfigError as e:
            sys.stderr.write(f"mailplat: configuration error: {e}\n")
            raise SystemExit(2)
        if run_as is not None:
            if twistd is not None:
                # twistd switches for good once its pid and log files are
                # written, before the reactor runs (setgid, initgroups, setuid).
                twistd["uid"], twistd["gid"] = run_as.uid, run_as.gid
            else:
                privileges.drop(run_as)
        if config.log_format == "json":
            top.log_observer = oplog.json_observer(_log_file(getattr(options, "parent", None)))
        return top


serviceMaker = MailplatServiceMaker()
