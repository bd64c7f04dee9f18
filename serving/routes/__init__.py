"""The API's routes, one `APIRouter` per module by what they serve; `serving.api.create_app` includes `ROUTERS`.

The order is the registration order, and it matters where paths overlap: `recommend` registers
`/recommend/batch` before `/recommend/{user_id}` (see there). It is also the order of the OpenAPI document.
"""

from serving.routes import events, operations, pages, probes, recommend

ROUTERS = (recommend.router, events.router, operations.router, probes.router, pages.router)
