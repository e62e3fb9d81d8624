"""A sample v2-model function app for the local host's tests (loaded by path, once per test module)."""

import asyncio
import json
import threading

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

TIMER_CALLS: list[dict[str, object]] = []
TIMER_EVENT = threading.Event()


@app.route(route="items/options", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def item_options(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"handler": "options"}), mimetype="application/json")


@app.route(route="items/{app}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_item(req: func.HttpRequest) -> func.HttpResponse:
    body = {"handler": "item", "route": dict(req.route_params), "query": dict(req.params), "url": req.url}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.route(route="items/{app}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def create_item(req: func.HttpRequest) -> func.HttpResponse:
    """Sync: runs in a worker thread."""
    payload = req.get_json()
    body = {
        "handler": "create",
        "app": req.route_params["app"],
        "payload": payload,
        "thread": threading.current_thread().name,
        "content_type": req.headers.get("Content-Type"),
    }
    response = func.HttpResponse(
        json.dumps(body),
        status_code=201,
        mimetype="application/json",
        headers={"Location": f"/items/{req.route_params['app']}/1"},
    )
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    return response


@app.route(route="items/{app}/{itemId}", methods=["GET", "DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_sub_item(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return func.HttpResponse(
        json.dumps({"handler": "sub", "route": dict(req.route_params), "method": req.method}),
        mimetype="application/json",
    )


@app.route(route="items/{app}/name/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_by_name(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"handler": "by-name", "route": dict(req.route_params)}), mimetype="application/json"
    )


@app.route(route="echo/headers", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def echo_headers(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"x-custom": req.headers.get("X-Custom")}), mimetype="application/json")


@app.route(route="files/{*path}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def files(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.route_params.get("path", ""))


@app.route(route="opt/{a}/{b?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def optional(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(dict(req.route_params)), mimetype="application/json")


@app.route(route="boom", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("kaboom from the sample app")


@app.route(route="boom-sync", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def boom_sync(req: func.HttpRequest) -> func.HttpResponse:
    raise ValueError("sync kaboom")


@app.function_name("secured")
@app.route(route="secure", methods=["GET"], trigger_arg_name="request")  # the app's default: FUNCTION
async def secure(request: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """The trigger parameter is not called 'req' (the host reads it from the binding); takes a context."""
    return func.HttpResponse(f"secret stuff for {context.function_name}")


@app.route(route="size", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def size(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(str(len(req.get_body())))


@app.timer_trigger(arg_name="timer", schedule="%SCHEDULE_SETTING%", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    TIMER_CALLS.append({"past_due": timer.past_due, "thread": threading.current_thread().name})
    TIMER_EVENT.set()
