"""The Chinese names people read for task types, severities, states and resolutions, defined once for what the
hub writes itself (notifications, ledgers). The pages keep theirs in api/static/common.js."""

from __future__ import annotations

__all__ = ["CHECK_RESULT_NAMES", "FACILITY_KINDS", "FREQUENCY_NAMES", "RESOLUTION_NAMES", "SEVERITY_NAMES",
           "STATE_NAMES", "TYPE_NAMES", "UNIT_CLASSES"]

TYPE_NAMES = {
    "fire_alarm": "火警", "fire_incident": "火灾事件", "sprinkler_critical": "喷淋压力危急",
    "sprinkler_low": "喷淋压力低", "sprinkler_high": "喷淋压力高", "sprinkler_drop": "喷淋压力骤降",
    "light_fault": "楼道灯故障", "device_offline": "设备离线",
    "device_fault": "设备故障", "low_battery": "电量低", "tamper": "设备被拆", "exit_blocked": "安全出口堵塞",
    "camera_obstructed": "摄像头遮挡", "noisy_device": "频繁报警", "patrol": "安全巡查", "hazard": "隐患整改",
    "recheck": "整改复查",
}
SEVERITY_NAMES = {"critical": "紧急", "high": "高", "normal": "一般", "low": "低"}
STATE_NAMES = {"open": "待接单", "accepted": "已接单", "on_site": "已到场", "resolved": "已办结", "closed": "已结案"}
RESOLUTION_NAMES = {"fixed": "已处置", "false_alarm": "误报", "duplicate": "重复", "referred_119": "已转119",
                    "recovered": "已恢复", "done": "已巡查"}
UNIT_CLASSES = {"key": "重点单位", "general": "一般单位", "shop": "个体经营户", "major_hazard": "重大危险源"}
FREQUENCY_NAMES = {"weekly": "每周", "monthly": "每月", "quarterly": "每季度", "half_yearly": "每半年", "yearly": "每年",
                   "alert": "告警触发"}
FACILITY_KINDS = {"hydrant": "消火栓", "extinguisher": "灭火器", "hose_reel": "消防软管卷盘", "emergency_light": "应急照明",
                  "fire_door": "防火门"}
CHECK_RESULT_NAMES = {"ok": "合格", "hazard": "隐患", "n/a": "不涉及"}
