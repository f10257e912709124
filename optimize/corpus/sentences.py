"""Seeded generators of structured English and Mandarin sentences for the synthetic corpus.

The sentences are assistant-style commands, dates, times, numbers and common phrases: a small model
trained for an hour on 2 CPU cores can learn them, unlike random word strings. Every choice is drawn
from the caller's `numpy.random.Generator`, so a sentence is a pure function of the generator state.

English is written in spoken form, upper-case, letters and single spaces only ("SEVEN THIRTY", never
"7:30"), which is what FireRedASR's tokenizer emits. Mandarin is Chinese characters only, numbers
written as characters (七点半). Every character used here is read by espeak-ng's `cmn-latn-pinyin`
voice as one Mandarin syllable (checked by tests/test_corpus.py).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

Slot = Callable[[np.random.Generator], str]

# Lengths the brief asks for: 3-12 English words, 4-16 Mandarin characters.
EN_WORDS = (3, 12)
ZH_CHARS = (4, 16)


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _fill(rng: np.random.Generator, template: str, slots: dict[str, Slot]) -> str:
    """Replace each `{name}` in `template` by a fresh draw from `slots[name]`."""
    return re.sub(r"\{(\w+)\}", lambda m: slots[m.group(1)](rng), template)


# ---- English numbers in spoken form ------------------------------------------------------------

_ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN "
         "FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN").split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_ORD_ONES = ("_ FIRST SECOND THIRD FOURTH FIFTH SIXTH SEVENTH EIGHTH NINTH TENTH ELEVENTH TWELFTH "
             "THIRTEENTH FOURTEENTH FIFTEENTH SIXTEENTH SEVENTEENTH EIGHTEENTH NINETEENTH").split()


def spell_en(n: int) -> str:
    """0 <= n < 10000 in words: 305 -> "THREE HUNDRED FIVE" (American style, no "AND")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + spell_en(n % 100)
        return _ONES[n // 100] + " HUNDRED" + rest
    rest = "" if n % 1000 == 0 else " " + spell_en(n % 1000)
    return _ONES[n // 1000] + " THOUSAND" + rest


def ordinal_en(n: int) -> str:
    """1 <= n <= 31 as an ordinal: 21 -> "TWENTY FIRST", 30 -> "THIRTIETH"."""
    if n < 20:
        return _ORD_ONES[n]
    if n % 10 == 0:
        return _TENS[n // 10][:-1] + "IETH"
    return _TENS[n // 10] + " " + _ORD_ONES[n % 10]


def _en_clock(rng: np.random.Generator) -> str:
    """A clock time as people say it: SEVEN THIRTY, HALF PAST SIX, QUARTER TO NINE, TEN OH FIVE."""
    hour = int(rng.integers(1, 13))
    kind = int(rng.integers(5))
    if kind == 0:
        return f"HALF PAST {spell_en(hour)}"
    if kind == 1:
        return f"QUARTER {_pick(rng, ('PAST', 'TO'))} {spell_en(hour)}"
    if kind == 2:
        return f"{spell_en(hour)} {_pick(rng, ('FIFTEEN', 'THIRTY', 'FORTY FIVE'))}"
    if kind == 3:
        return f"{spell_en(hour)} OH {spell_en(int(rng.integers(1, 10)))}"
    return f"{spell_en(hour)} {spell_en(int(rng.integers(10, 60)))}"


def _en_year(rng: np.random.Generator) -> str:
    """1950-2030 as read aloud: NINETEEN EIGHTY FIVE, TWO THOUSAND SIX, TWENTY TWENTY FOUR."""
    year = int(rng.integers(1950, 2031))
    if 2000 <= year < 2010:
        return spell_en(year)
    return f"{spell_en(year // 100)} {spell_en(year % 100)}"


_EN_LISTS: dict[str, tuple[str, ...]] = {
    "name": tuple("JOHN MARY DAVID SARAH MICHAEL EMMA JAMES LINDA ROBERT ANNA PETER LUCY THOMAS KATE "
                  "DANIEL SOPHIE GEORGE OLIVIA HENRY GRACE".split()),
    "city": ("LONDON", "PARIS", "TOKYO", "BERLIN", "MADRID", "ROME", "BOSTON", "CHICAGO", "SEATTLE",
             "DENVER", "DALLAS", "TORONTO", "SYDNEY", "DUBLIN", "VIENNA", "NEW YORK", "SAN FRANCISCO",
             "LOS ANGELES", "SHANGHAI", "BEIJING"),
    "weekday": tuple("MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY".split()),
    "month": tuple("JANUARY FEBRUARY MARCH APRIL MAY JUNE JULY AUGUST SEPTEMBER OCTOBER NOVEMBER "
                   "DECEMBER".split()),
    "daypart": ("MORNING", "AFTERNOON", "EVENING", "NIGHT"),
    "room": ("KITCHEN", "BEDROOM", "LIVING ROOM", "BATHROOM", "OFFICE", "GARAGE", "HALLWAY", "GARDEN",
             "DINING ROOM", "BASEMENT"),
    "device": ("LIGHTS", "FAN", "HEATER", "TELEVISION", "RADIO", "OVEN", "AIR CONDITIONER",
               "COFFEE MACHINE", "WASHING MACHINE", "LAMP"),
    "item": ("APPLES", "BANANAS", "EGGS", "ORANGES", "TOMATOES", "POTATOES", "ONIONS", "CARROTS",
             "LEMONS", "BOTTLES OF WATER", "CANS OF SOUP", "BAGS OF RICE", "LOAVES OF BREAD", "CUPS",
             "PLATES", "BATTERIES"),
    "task": ("CALL THE DOCTOR", "BUY SOME MILK", "WATER THE PLANTS", "PAY THE RENT", "FEED THE CAT",
             "WALK THE DOG", "CLEAN THE KITCHEN", "SEND THE REPORT", "BOOK A TABLE", "PICK UP THE KIDS",
             "TAKE MY MEDICINE", "CHECK THE MAIL", "RENEW MY PASSPORT", "FIX THE SINK",
             "READ THE CONTRACT", "BRING AN UMBRELLA"),
    "event": ("THE MEETING", "THE DENTIST APPOINTMENT", "THE CONCERT", "THE PARTY", "THE INTERVIEW",
              "THE FLIGHT", "THE GAME", "THE LECTURE", "THE WEDDING", "THE DINNER", "THE CLASS",
              "THE EXAM"),
    "genre": ("JAZZ", "ROCK", "CLASSICAL", "POP", "COUNTRY", "FOLK", "PIANO", "RELAXING", "HAPPY",
              "DANCE"),
    "place": ("RESTAURANT", "GAS STATION", "PHARMACY", "HOSPITAL", "BANK", "SUPERMARKET", "AIRPORT",
              "TRAIN STATION", "LIBRARY", "PARK", "POST OFFICE", "HOTEL", "MUSEUM", "BUS STOP",
              "COFFEE SHOP"),
    "weather": ("SUNNY", "RAINY", "CLOUDY", "WINDY", "COLD", "WARM", "HOT", "FOGGY", "SNOWY", "STORMY"),
    "when": ("TODAY", "TOMORROW", "TONIGHT", "THIS WEEKEND", "NEXT WEEK", "THIS AFTERNOON",
             "TOMORROW MORNING", "ON FRIDAY", "LATER TODAY", "IN AN HOUR"),
    "unit": ("MINUTES", "HOURS", "SECONDS", "DAYS", "WEEKS"),
    "relative": ("MY MOTHER", "MY FATHER", "MY SISTER", "MY BROTHER", "MY BOSS", "MY FRIEND",
                 "THE TEACHER", "THE DRIVER", "OUR NEIGHBOR", "THE MANAGER"),
    "food": ("PIZZA", "NOODLES", "SUSHI", "CHICKEN SOUP", "SALAD", "PASTA", "FRIED RICE", "STEAK",
             "DUMPLINGS", "PANCAKES", "SANDWICHES", "ICE CREAM"),
    "color": ("RED", "BLUE", "GREEN", "YELLOW", "WHITE", "BLACK", "ORANGE", "PURPLE", "BROWN", "GREY"),
    "phrase": ("THANK YOU VERY MUCH", "GOOD MORNING EVERYONE", "SEE YOU LATER", "HAVE A NICE DAY",
               "I AM SORRY I AM LATE", "NICE TO MEET YOU", "HOW ARE YOU TODAY", "WELCOME BACK HOME",
               "PLEASE SIT DOWN", "HAPPY BIRTHDAY TO YOU", "GOOD NIGHT AND SLEEP WELL",
               "EXCUSE ME WHERE IS THE EXIT", "I DO NOT UNDERSTAND", "COULD YOU SAY THAT AGAIN",
               "THAT SOUNDS LIKE A GOOD IDEA", "LET ME THINK ABOUT IT", "WHAT IS YOUR NAME",
               "I WILL BE THERE IN FIVE MINUTES", "CAN YOU HELP ME PLEASE", "SAFE TRAVELS"),
}


def _en_slots() -> dict[str, Slot]:
    slots: dict[str, Slot] = {k: (lambda rng, v=v: _pick(rng, v)) for k, v in _EN_LISTS.items()}
    slots.update(
        clock=_en_clock,
        year=_en_year,
        hour=lambda rng: spell_en(int(rng.integers(1, 13))),
        small=lambda rng: spell_en(int(rng.integers(2, 13))),
        number=lambda rng: spell_en(int(rng.integers(1, 100))),
        price=lambda rng: spell_en(int(rng.integers(2, 1000))),
        temp=lambda rng: spell_en(int(rng.integers(16, 31))),
        digits=lambda rng: " ".join(_ONES[int(d)] for d in rng.integers(0, 10, int(rng.integers(3, 6)))),
        ordinal=lambda rng: ordinal_en(int(rng.integers(1, 32))),
    )
    return slots


EN_TEMPLATES: tuple[str, ...] = (
    "SET AN ALARM FOR {clock} {when}",
    "WAKE ME UP AT {clock} TOMORROW {daypart}",
    "REMIND ME TO {task} {when}",
    "REMIND ME TO {task} AT {clock}",
    "{event} IS ON {month} {ordinal}",
    "{event} STARTS AT {clock} ON {weekday}",
    "MOVE {event} TO {weekday} {daypart}",
    "TODAY IS {weekday} {month} {ordinal}",
    "I WAS BORN ON {month} {ordinal} {year}",
    "WHAT IS THE WEATHER LIKE IN {city} {when}",
    "IT WILL BE {weather} IN {city} {when}",
    "IT IS {temp} DEGREES IN {city} RIGHT NOW",
    "SET THE TEMPERATURE TO {temp} DEGREES",
    "CALL {name} AT {clock}",
    "CALL {relative} {when}",
    "SEND A MESSAGE TO {name} SAYING {phrase}",
    "PLAY SOME {genre} MUSIC",
    "PLAY SOME {genre} MUSIC IN THE {room}",
    "TURN THE VOLUME UP TO {number}",
    "TURN {onoff} THE {device} IN THE {room}",
    "PLEASE TURN {onoff} THE {device}",
    "ADD {small} {item} TO MY SHOPPING LIST",
    "WE NEED {small} MORE {item}",
    "MY PHONE NUMBER ENDS WITH {digits}",
    "THE DOOR CODE IS {digits}",
    "THE TICKET COSTS {price} DOLLARS",
    "I PAID {price} DOLLARS FOR THE {color} BAG",
    "HOW FAR IS IT TO {city}",
    "TAKE ME TO THE NEAREST {place}",
    "WHERE IS THE CLOSEST {place}",
    "SET A TIMER FOR {number} {unit}",
    "THE TRAIN TO {city} LEAVES AT {clock}",
    "THE FLIGHT TO {city} IS AT {clock} {when}",
    "WHAT TIME IS IT IN {city}",
    "BOOK A TABLE FOR {small} AT {clock}",
    "I WOULD LIKE TO ORDER {food}",
    "LET US HAVE {food} FOR DINNER {when}",
    "{name} IS WAITING IN THE {room}",
    "{name} WILL ARRIVE IN {city} ON {weekday}",
    "{relative} LIKES THE {color} ONE",
    "THE {place} OPENS AT {clock}",
    "{phrase}",
    "{phrase} {name}",
    "ROOM {number} IS ON THE {floor} FLOOR",
    "OPEN THE {color} FOLDER",
)


# ---- Mandarin numbers in characters -------------------------------------------------------------

_ZH_DIGITS = "零一二三四五六七八九"


def spell_zh(n: int) -> str:
    """0 <= n < 10000 in characters: 15 -> 十五, 105 -> 一百零五, 2030 -> 二千零三十."""
    if n < 10:
        return _ZH_DIGITS[n]
    if n < 20:
        return "十" + ("" if n == 10 else _ZH_DIGITS[n % 10])
    if n < 100:
        return _ZH_DIGITS[n // 10] + "十" + ("" if n % 10 == 0 else _ZH_DIGITS[n % 10])
    for unit, size in (("千", 1000), ("百", 100)):
        if n >= size:
            head, rest = _ZH_DIGITS[n // size] + unit, n % size
            if rest == 0:
                return head
            # 一百零五: a zero marker when the next place is skipped; 一百一十五, not 一百十五.
            if rest < size // 10:
                return head + "零" + spell_zh(rest)
            return head + ("一" + spell_zh(rest) if 10 <= rest < 20 else spell_zh(rest))
    raise AssertionError(n)


def _zh_hour(rng: np.random.Generator) -> str:
    hour = int(rng.integers(1, 13))
    return "两" if hour == 2 else spell_zh(hour)  # 两点, never 二点


def _zh_clock(rng: np.random.Generator) -> str:
    """A clock time: 七点半, 八点一刻, 十点十五分, 九点零五分, 两点."""
    hour, kind = _zh_hour(rng), int(rng.integers(5))
    if kind == 0:
        return hour + "点"
    if kind == 1:
        return hour + "点半"
    if kind == 2:
        return hour + "点" + _pick(rng, ("一刻", "三刻"))
    minute = int(rng.integers(1, 60))
    return hour + "点" + ("零" if minute < 10 else "") + spell_zh(minute) + "分"


def _zh_date(rng: np.random.Generator) -> str:
    return spell_zh(int(rng.integers(1, 13))) + "月" + spell_zh(int(rng.integers(1, 32))) + _pick(rng, "号日")


_ZH_LISTS: dict[str, tuple[str, ...]] = {
    "name": ("张伟", "王芳", "李娜", "刘洋", "陈静", "杨帆", "赵磊", "黄丽", "周杰", "吴敏", "徐明", "孙强",
             "马超", "朱红", "胡军", "郭亮", "林小雨", "何平", "高峰", "罗云"),
    "relative": ("妈妈", "爸爸", "姐姐", "哥哥", "妹妹", "弟弟", "爷爷", "奶奶", "老师", "老板", "同事",
                 "朋友", "医生", "司机", "邻居"),
    "city": ("北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "重庆", "武汉", "西安", "天津", "苏州",
             "长沙", "青岛", "大连", "厦门", "昆明", "沈阳", "郑州", "济南", "合肥", "福州", "南昌", "贵阳",
             "兰州", "哈尔滨", "香港", "台北"),
    "daypart": ("早上", "上午", "中午", "下午", "晚上", "明天早上", "今天晚上", "明天下午"),
    "day": ("今天", "明天", "后天", "昨天", "这个周末", "下个星期", "星期一", "星期二", "星期三",
            "星期四", "星期五", "星期六", "星期天"),
    "weekday": ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期天", "周末"),
    "room": ("客厅", "卧室", "厨房", "书房", "卫生间", "阳台", "餐厅", "办公室", "车库", "儿童房"),
    "device": ("灯", "空调", "电视", "窗帘", "风扇", "热水器", "电饭煲", "洗衣机", "音箱", "加湿器",
               "台灯", "冰箱"),
    "onoff": ("打开", "关掉", "关闭", "开一下"),
    "weather": ("晴天", "多云", "小雨", "大雨", "阴天", "下雪", "有雾", "刮大风", "雷阵雨", "晴转多云"),
    "food": ("米饭", "面条", "饺子", "包子", "火锅", "牛肉面", "炒饭", "馄饨", "烤鸭", "豆腐", "鸡蛋汤",
             "红烧肉", "小笼包", "麻辣烫", "蛋糕", "水果"),
    "fruit": ("苹果", "香蕉", "西瓜", "橘子", "葡萄", "草莓", "桃子", "梨", "芒果", "柠檬"),
    "thing": ("手机", "电脑", "雨伞", "钥匙", "书包", "眼镜", "衣服", "鞋子", "杯子", "帽子", "手表",
              "耳机", "钱包", "本子"),
    "color": ("红色", "蓝色", "绿色", "黄色", "白色", "黑色", "紫色", "灰色", "粉色", "橙色"),
    "task": ("开会", "吃药", "买菜", "交电费", "取快递", "接孩子", "给花浇水", "去银行", "写报告",
             "打扫房间", "遛狗", "喂猫", "健身", "洗车", "还书", "订机票"),
    "event": ("会议", "面试", "音乐会", "生日聚会", "考试", "婚礼", "比赛", "讲座", "晚饭", "体检"),
    "genre": ("流行音乐", "古典音乐", "摇滚", "民歌", "轻音乐", "儿歌", "钢琴曲", "爵士乐"),
    "place": ("医院", "银行", "超市", "机场", "火车站", "地铁站", "加油站", "药店", "图书馆", "公园",
              "邮局", "酒店", "饭店", "学校", "博物馆", "电影院"),
    "ticket": ("火车票", "机票", "电影票", "高铁票", "船票"),
    "phrase": ("谢谢你", "你好", "早上好", "晚安", "对不起", "没关系", "不客气", "好久不见", "欢迎光临",
               "祝你生日快乐", "请问洗手间在哪里", "我听不懂", "请再说一遍", "这个主意不错", "我马上就到",
               "路上小心", "新年快乐", "你吃饭了吗", "今天辛苦了", "请稍等一下", "我很高兴认识你",
               "明天见", "请慢慢说", "注意安全"),
}


def _zh_slots() -> dict[str, Slot]:
    slots: dict[str, Slot] = {k: (lambda rng, v=v: _pick(rng, v)) for k, v in _ZH_LISTS.items()}
    slots.update(
        clock=_zh_clock,
        date=_zh_date,
        hour=_zh_hour,
        month=lambda rng: spell_zh(int(rng.integers(1, 13))),
        small=lambda rng: _pick(rng, "两三四五六七八九十"),
        number=lambda rng: spell_zh(int(rng.integers(1, 100))),
        price=lambda rng: spell_zh(int(rng.integers(2, 1000))),
        temp=lambda rng: spell_zh(int(rng.integers(16, 31))),
        # Phone numbers are read digit by digit; 幺 is avoided so the digit set stays one-to-one.
        digits=lambda rng: "".join(_ZH_DIGITS[int(d)] for d in rng.integers(0, 10, int(rng.integers(3, 8)))),
        year=lambda rng: "".join(_ZH_DIGITS[int(d)] for d in str(int(rng.integers(1950, 2031)))),
        floor=lambda rng: spell_zh(int(rng.integers(1, 31))),
    )
    return slots


ZH_TEMPLATES: tuple[str, ...] = (
    "{daypart}{clock}提醒我{task}",
    "{day}{clock}提醒我{task}",
    "提醒我{day}{task}",
    "设置一个{clock}的闹钟",
    "{daypart}{clock}叫醒我",
    "今天是{date}{weekday}",
    "{event}定在{date}",
    "{event}改到{weekday}{daypart}",
    "{event}{day}{clock}开始",
    "我是{year}年{month}月出生的",
    "{city}{day}的天气怎么样",
    "{city}{day}{weather}",
    "{city}现在{temp}度",
    "把空调调到{temp}度",
    "把{room}的{device}{onoff}",
    "帮我{onoff}{device}",
    "给{name}打电话",
    "{daypart}给{relative}打个电话",
    "发消息告诉{name}{phrase}",
    "播放一首{genre}",
    "在{room}放点{genre}",
    "音量调到{number}",
    "帮我订一张{day}去{city}的{ticket}",
    "去{city}的{ticket}多少钱",
    "这个{thing}{price}块钱",
    "{fruit}多少钱一斤",
    "买{small}斤{fruit}",
    "购物清单加上{small}个{fruit}",
    "我的电话号码是{digits}",
    "房间号是{digits}",
    "最近的{place}在哪里",
    "带我去{place}",
    "从这里到{city}有多远",
    "设置一个{number}分钟的计时器",
    "我想吃{food}",
    "{day}晚上吃{food}吧",
    "{name}在{room}等你",
    "{relative}{day}来{city}",
    "我的{thing}找不到了",
    "我喜欢那个{color}的{thing}",
    "{phrase}",
    "{name}{phrase}",
    "{relative}{phrase}",
    "会议室在{floor}楼",
    "{city}的{place}几点开门",
)

_EN_SLOTS = _en_slots()
_EN_SLOTS.update(
    onoff=lambda rng: _pick(rng, ("ON", "OFF")),
    floor=lambda rng: ordinal_en(int(rng.integers(1, 21))),
)
_ZH_SLOTS = _zh_slots()


def english(rng: np.random.Generator) -> str:
    """One English sentence, upper-case spoken form, 3-12 words."""
    while True:
        text = _fill(rng, _pick(rng, EN_TEMPLATES), _EN_SLOTS)
        if EN_WORDS[0] <= len(text.split()) <= EN_WORDS[1]:
            return text


def mandarin(rng: np.random.Generator) -> str:
    """One Mandarin sentence, Chinese characters only, 4-16 characters."""
    while True:
        text = _fill(rng, _pick(rng, ZH_TEMPLATES), _ZH_SLOTS)
        if ZH_CHARS[0] <= len(text) <= ZH_CHARS[1]:
            return text


def sentence(rng: np.random.Generator, lang: str) -> str:
    """One sentence in `lang` ("en" or "zh")."""
    return english(rng) if lang == "en" else mandarin(rng)


def _literal_text(templates: Sequence[str], lists: dict[str, tuple[str, ...]]) -> str:
    return " ".join(re.sub(r"\{\w+\}", " ", t) for t in templates) + " " + " ".join(" ".join(v) for v in lists.values())


def zh_inventory() -> set[str]:
    """Every Chinese character any Mandarin sentence can contain."""
    text = _literal_text(ZH_TEMPLATES, _ZH_LISTS) + " " + _ZH_DIGITS + "十百两点半刻分月号日"
    return {c for c in text if "\u4e00" <= c <= "\u9fff"}


def en_inventory() -> set[str]:
    """Every English word any English sentence can contain."""
    text = _literal_text(EN_TEMPLATES, _EN_LISTS) + " " + " ".join(_ONES + _TENS[2:] + _ORD_ONES[1:])
    extra = "HUNDRED THOUSAND HALF PAST QUARTER TO OH ON OFF TWENTIETH THIRTIETH"
    return set((text + " " + extra).split())
