"""The Function App: builds the FunctionApp and registers the blueprints; nothing else.

Azure SDKs are imported where they are used, not here, so that a cold start stays cheap.
"""

import azure.functions as func

from shared import redaction, telemetry
from shared.functions.audit import bp as audit
from shared.functions.connections import bp as connections
from shared.functions.console import bp as console
from shared.functions.console_auth import bp as console_auth
from shared.functions.health import bp as health
from shared.functions.oauth import bp as oauth
from shared.functions.openapi import bp as openapi
from shared.functions.rotation import bp as rotation

redaction.install()  # before anything logs: every log record is redacted
telemetry.configure()  # exports only with APPLICATIONINSIGHTS_CONNECTION_STRING; imports nothing otherwise
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)  # every route checks an access token itself
app.register_functions(connections)
app.register_functions(oauth)
app.register_functions(rotation)
app.register_functions(openapi)
app.register_functions(audit)
app.register_functions(health)
app.register_functions(console_auth)  # the console's sign-in: a session cookie, never a token in the browser
app.register_functions(console)  # the web console: static page and assets, nothing heavy imported
