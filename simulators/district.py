"""Generated districts (registry files of CONTRACT §2) in three sizes, modelled on a Xiamen district."""

from __future__ import annotations

from typing import Any

import yaml

# (id, name, [(community id, name), ...]) — real street and community names of 思明区, ids in pinyin
STREETS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("xiagang", "厦港街道", [("shapowei", "沙坡尾社区"), ("daxuelu", "大学路社区"), ("hongshan", "鸿山社区"),
                          ("xiaxi-lu", "蜂巢山社区")]),
    ("zhonghua", "中华街道", [("renan", "仁安社区"), ("xiaxi", "霞溪社区"), ("zhongshan", "中山社区"),
                           ("kaihe", "开禾社区")]),
    ("lujiang", "鹭江街道", [("yingping", "营平社区"), ("zhenhai", "镇海社区"), ("lujiangdao", "鹭江道社区"),
                          ("xiahe", "厦禾社区")]),
    ("jialian", "嘉莲街道", [("yuelong", "岳阳社区"), ("lianbei", "莲北社区"), ("jianxin", "建兴社区"),
                          ("xingfu", "幸福社区")]),
    ("wucun", "梧村街道", [("jinhe", "金榜社区"), ("wucun-c", "梧村社区"), ("xiahe-c", "厦禾里社区"),
                        ("hubin", "湖滨社区")]),
    ("kaiyuan", "开元街道", [("wenping", "文屏社区"), ("tongan", "同安社区"), ("wanzhai", "万寿社区"),
                          ("dongfang", "东方社区")]),
    ("yundang", "筼筜街道", [("hubinnan", "湖滨南社区"), ("songbai", "松柏社区"), ("yundang-c", "筼筜社区"),
                          ("xianyue", "仙岳社区")]),
    ("lianqian", "莲前街道", [("qianpu", "前埔社区"), ("lingdou", "岭兜社区"), ("juntai", "君泰社区"),
                           ("dongping", "东坪山社区")]),
    ("binhai", "滨海街道", [("zengcuoan", "曾厝垵社区"), ("huangcuo", "黄厝社区"), ("huandao", "环岛社区"),
                         ("baicheng", "白城社区")]),
    ("gulangyu", "鼓浪屿街道", [("longtou", "龙头社区"), ("neicuo", "内厝社区"), ("gangzaihou", "港仔后社区"),
                            ("lujiaoshan", "鹿礁社区")]),
]

SIZES: dict[str, dict[str, int]] = {
    # streets, communities per street, grids per community, buildings per grid
    "small": {"streets": 1, "communities": 2, "grids": 2, "buildings": 2, "cameras_per": 1},
    "medium": {"streets": 3, "communities": 2, "grids": 2, "buildings": 3, "cameras_per": 1},
    "large": {"streets": 10, "communities": 4, "grids": 3, "buildings": 5, "cameras_per": 0},
}

SURNAMES = "张李王赵钱孙周吴郑冯陈褚卫蒋沈韩杨朱秦尤许何吕施孔曹严华金魏"
GIVEN = "三四五六七八九十"
GRID_NAMES = "一二三四五六七八九十"
ROOMS = ["客厅", "厨房", "卧室", "走廊", "配电间", "楼道"]
CAMERA_ROI = [[0.41, 0.52], [0.59, 0.52], [0.93, 0.99], [0.07, 0.99]]


def placeholder_name(i: int) -> str:
    """张三, 李四, 王五, 赵六, ... : placeholder names for demo and test people."""
    return SURNAMES[i % len(SURNAMES)] + GIVEN[(i + i // len(SURNAMES)) % len(GIVEN)]


def generate_district(size: str) -> dict[str, Any]:
    """A registry document: streets, communities, grids, buildings, workers and devices of every kind."""
    if size not in SIZES:
        raise ValueError(f"district size {size!r} is not one of {', '.join(SIZES)}")
    shape = SIZES[size]
    people = 0
    workers: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    counters = {"sa": 0, "sl": 0, "sp": 0, "cam": 0}

    def next_id(prefix: str) -> str:
        counters[prefix] += 1
        return f"{prefix}-{counters[prefix]:04d}"

    def person(wid: str, role: str, **scope: Any) -> None:
        nonlocal people
        workers.append({"id": wid, "name": placeholder_name(people), "phone": f"1380000{people + 1:04d}",
                        "role": role, **scope})
        people += 1

    streets: list[dict[str, Any]] = []
    building_no = 0
    grid_no = 0
    community_no = 0
    for si, (sid, sname, communities) in enumerate(STREETS[: shape["streets"]]):
        street: dict[str, Any] = {"id": sid, "name": sname, "communities": []}
        person(f"s-{si + 1:03d}", "street_officer", street=sid)
        for cid, cname in communities[: shape["communities"]]:
            community_no += 1
            community: dict[str, Any] = {"id": cid, "name": cname, "grids": []}
            grid_ids: list[str] = []
            for gi in range(shape["grids"]):
                grid_no += 1
                gid = f"g-{cid}-{gi + 1:02d}"
                grid_ids.append(gid)
                grid: dict[str, Any] = {"id": gid, "name": f"{GRID_NAMES[gi % 10]}网格", "buildings": []}
                for bi in range(shape["buildings"]):
                    building_no += 1
                    bid = f"b-{cid}-{bi + 1 + gi * shape['buildings']:02d}"
                    floors = 6 + (building_no * 5) % 13
                    grid["buildings"].append({"id": bid, "name": f"{bi + 1 + gi * shape['buildings']}号楼",
                                              "floors": floors})
                    devices += _building_devices(bid, floors, next_id)
                    if bi == 0 and (shape["cameras_per"] or gi == 0):
                        devices.append({"id": next_id("cam"), "kind": "camera", "building": bid, "floor": 1,
                                        "place": "一楼安全出口",
                                        "camera": {"roi": CAMERA_ROI, "min_blocked_s": 60, "interval_s": 5}})
                community["grids"].append(grid)
                person(f"w-{grid_no:03d}", "grid_worker", grids=[gid])
            person(f"h-{community_no:03d}", "grid_head", grids=grid_ids)
            street["communities"].append(community)
        streets.append(street)
    person("b-001", "bureau")
    person("a-001", "admin")
    # a detector taken down last year: it keeps its history and is no longer accepted
    first = streets[0]["communities"][0]["grids"][0]["buildings"][0]["id"]
    devices.append({"id": "sa-0000", "kind": "smoke_alarm", "building": first, "floor": 1, "place": "101 已拆除",
                    "retired": True})
    return {"districts": [{"id": "siming", "name": "思明区", "streets": streets}],
            "workers": workers, "devices": devices}


def _building_devices(bid: str, floors: int, next_id: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k in range(6):
        floor = 1 + (k * floors) // 6
        out.append({"id": next_id("sa"), "kind": "smoke_alarm", "building": bid, "floor": floor,
                    "place": f"{floor}0{k % 4 + 1} {ROOMS[k % len(ROOMS)]}"})
    for floor in sorted({1, max(1, floors // 2), floors}):
        out.append({"id": next_id("sl"), "kind": "stairwell_light", "building": bid, "floor": floor,
                    "place": f"{floor}楼楼梯间"})
    out.append({"id": next_id("sp"), "kind": "sprinkler_pressure", "building": bid, "floor": floors,
                "place": "顶层末端试水装置"})
    return out


def dump_registry(data: dict[str, Any]) -> str:
    """The registry as YAML, one device a line."""
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=None, width=120)
