"""The Function App: builds the FunctionApp and registers the blueprints; nothing else.

Azure SDKs are imported where they are used, not here, so that a cold start stays cheap.
"""

import azure.functions as func

from shared.functions.connections import bp as connections
from shared.functions.oauth import bp as oauth
from shared.functions.rotation import bp as rotation

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(connections)
app.register_functions(oauth)
app.register_functions(rotation)
