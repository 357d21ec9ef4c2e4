"""The bundled demo corpus: a few MB of multilingual text made here, deterministically, offline.

    python -m pipeline demo-corpus --params params.yaml --params params/demo.yaml [--size-mb 4]

Azerbaijani, English, Turkish and Russian documents from small grammars over real words: weather
reports, city facts, dates with their weekdays, arithmetic, shopping lists and everyday sentences
whose verbs agree with their subjects. The structure is there for a tiny model to learn within a
few hundred steps (temperatures fit the weather, weekdays follow each other, sums are right);
the random choices keep it from being memorized. One file per language, documents separated by
blank lines. A second run with the same content leaves the files (and their mtimes) alone.
"""
from __future__ import annotations

import argparse
import datetime
import random
from pathlib import Path
from typing import Callable

from pipeline.core.atomic import staging_dir
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

DEFAULT_SIZE_MB = 4.0
SEED = 20241124
# Share of the corpus bytes per language: Azerbaijani first, the language the project was made for.
SHARES = {"az": 0.40, "en": 0.25, "tr": 0.20, "ru": 0.15}

# --- shared facts --------------------------------------------------------------------------------

# city key -> (country key, is the capital)
CITIES = {
    "baku": ("az", True), "ganja": ("az", False), "shaki": ("az", False), "lankaran": ("az", False),
    "quba": ("az", False), "shamakhi": ("az", False), "nakhchivan": ("az", False),
    "sumgait": ("az", False), "mingachevir": ("az", False), "tbilisi": ("ge", True),
    "istanbul": ("tr", False), "ankara": ("tr", True), "izmir": ("tr", False),
    "moscow": ("ru", True), "kazan": ("ru", False), "london": ("uk", True), "paris": ("fr", True),
    "berlin": ("de", True), "tehran": ("ir", True), "tashkent": ("uz", True), "almaty": ("kz", False),
}
CONDITIONS = ("sunny", "cloudy", "rainy", "snowy", "foggy", "windy", "clear")
DIRECTIONS = ("n", "s", "e", "w", "ne", "nw", "se", "sw")
PLACES = ("park", "museum", "theatre", "library", "market", "school", "university", "square")
VERBS = ("read", "write", "drink", "eat", "watch", "listen", "cook", "buy", "learn", "play")
# item key -> unit key
ITEMS = {"apple": "kg", "pear": "kg", "bread": "pcs", "milk": "l", "cheese": "kg", "eggs": "pcs",
         "rice": "kg", "potato": "kg", "onion": "kg", "tomato": "kg", "cucumber": "kg", "tea": "pcs",
         "sugar": "kg", "meat": "kg", "fish": "kg", "juice": "l", "flour": "kg", "lemon": "pcs",
         "pomegranate": "kg", "grapes": "kg"}


def _weather(rng: random.Random) -> tuple[int, int, str, str, int]:
    """(day, night, condition, wind direction, wind m/s): the condition fits the temperature."""
    day = rng.randint(-8, 38)
    night = day - rng.randint(3, 12)
    if day <= 1:
        condition = rng.choice(("snowy", "snowy", "cloudy", "foggy"))
    elif day >= 26:
        condition = rng.choice(("sunny", "sunny", "clear", "windy"))
    else:
        condition = rng.choice(("sunny", "cloudy", "rainy", "rainy", "foggy", "windy", "clear"))
    return day, night, condition, rng.choice(DIRECTIONS), rng.randint(1, 15)


def _date(rng: random.Random) -> datetime.date:
    return datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randrange(365 * 30))


def _sum(rng: random.Random) -> tuple[int, str, int, int]:
    """(a, operator, b, result) with every number in 0..100."""
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        return a, op, b, a * b
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    if op == "-" and b > a:
        a, b = b, a
    return a, op, b, a + b if op == "+" else a - b


# --- grammar helpers -----------------------------------------------------------------------------

def _last_vowel(word: str, vowels: str) -> str:
    return next((ch for ch in reversed(word.lower()) if ch in vowels), vowels[0])


AZ_VOWELS = "aıoueəiöü"


def _az4(word: str) -> str:
    """Azerbaijani four-way harmony: the vowel a suffix like -dır/-dir/-dur/-dür takes."""
    return {"a": "ı", "ı": "ı", "o": "u", "u": "u", "e": "i", "ə": "i", "i": "i", "ö": "ü",
            "ü": "ü"}[_last_vowel(word, AZ_VOWELS)]


def _az2(word: str) -> str:
    """Two-way harmony: a after back vowels, ə after front ones (-da/-də, -lar/-lər)."""
    return "a" if _last_vowel(word, AZ_VOWELS) in "aıou" else "ə"


def az_locative(word: str) -> str:
    return f"{word}d{_az2(word)}"


def az_genitive(word: str) -> str:
    return f"{word}{'n' if word[-1].lower() in AZ_VOWELS else ''}{_az4(word)}n"


def az_copula(word: str) -> str:
    return f"{word}d{_az4(word)}r"


def upper_first(text: str, turkic: bool = False) -> str:
    """Capitalize the first letter only; in Azerbaijani and Turkish i/ı pair with İ/I."""
    first = {"i": "İ", "ı": "I"}.get(text[0], text[0]) if turkic else text[0]
    return first.upper() + text[1:]


def ru_plural(n: int, forms: tuple[str, str, str]) -> str:
    """один градус, два градуса, пять градусов."""
    n = abs(n)
    if n % 10 == 1 and n % 100 != 11:
        return forms[0]
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return forms[1]
    return forms[2]


def _tens_words(n: int, units: list[str], tens: list[str], hundred: str, sep: str = " ") -> str:
    if n == 100:
        return hundred
    if n < len(units):
        return units[n]
    t, u = divmod(n, 10)
    return tens[t] + (sep + units[u] if u else "")


# --- the languages -------------------------------------------------------------------------------

class Language:
    """Word lists and sentence patterns of one language; documents are built from them."""

    code = ""
    months: tuple[str, ...] = ()
    weekdays: tuple[str, ...] = ()       # Monday first

    def number(self, n: int) -> str:
        raise NotImplementedError

    def document(self, rng: random.Random) -> str:
        kind: Callable[[random.Random], list[str]] = rng.choice(
            (self.weather_report, self.city_facts, self.today, self.calendar, self.arithmetic,
             self.shopping, self.routine, self.routine))
        return "\n".join(kind(rng))

    def weather_report(self, rng: random.Random) -> list[str]:
        tomorrow = rng.random() < 0.5
        lines = [self.weather_title(tomorrow)]
        for city in rng.sample(sorted(CITIES), rng.randint(2, 5)):
            lines.append(self.weather(city, tomorrow, *_weather(rng)))
        return lines

    def city_facts(self, rng: random.Random) -> list[str]:
        city = rng.choice(sorted(CITIES))
        country, capital = CITIES[city]
        lines = [self.city_name(city), self.capital(city, country) if capital else self.city_in(city, country),
                 self.located(city, country)]
        for place in rng.sample(PLACES, rng.randint(1, 3)):
            lines.append(self.many(city, place))
        if rng.random() < 0.5:
            lines.append(self.weather(city, rng.random() < 0.5, *_weather(rng)))
        return [lines[0], " ".join(lines[1:])]

    def today(self, rng: random.Random) -> list[str]:
        day = _date(rng)
        one = datetime.timedelta(days=1)
        return [self.date_line(day), self.yesterday((day - one).weekday()) + " "
                + self.tomorrow((day + one).weekday())]

    def calendar(self, rng: random.Random) -> list[str]:
        start = _date(rng)
        days = [start + datetime.timedelta(days=i) for i in range(rng.randint(3, 7))]
        return [self.calendar_title] + [f"{self.short_date(d)} — {self.weekdays[d.weekday()]}" for d in days]

    def arithmetic(self, rng: random.Random) -> list[str]:
        lines = [self.arithmetic_title]
        for _ in range(rng.randint(4, 9)):
            a, op, b, c = _sum(rng)
            if rng.random() < 0.5:
                lines.append(f"{a} {'×' if op == '*' else op} {b} = {c}")
            else:
                lines.append(self.sum_sentence(a, op, b, c))
        return lines

    def shopping(self, rng: random.Random) -> list[str]:
        items = rng.sample(sorted(ITEMS), rng.randint(3, 8))
        lines = [self.shopping_title]
        lines += [f"- {self.items[item]}: {rng.randint(1, 5)} {self.units[ITEMS[item]]}" for item in items]
        lines.append(self.total(len(items)))
        return lines

    def routine(self, rng: random.Random) -> list[str]:
        sentences = []
        for _ in range(rng.randint(3, 8)):
            subject, person = self.subject(rng)
            verb = rng.choice(VERBS)
            sentences.append(self.clause(subject, person, verb, rng.choice(self.objects[verb]),
                                         rng.choice(self.times)))
        return [self.routine_title, " ".join(sentences)]

    def subject(self, rng: random.Random) -> tuple[str, int]:
        """(subject, person 0-5: I, you, he/she, we, you all, they)."""
        if rng.random() < 0.35:
            return rng.choice(self.names), 2
        person = rng.randrange(6)
        return rng.choice(self.pronouns[person]), person

    def short_date(self, day: datetime.date) -> str:
        return f"{day.day} {self.months[day.month - 1]} {day.year}"


class Azerbaijani(Language):
    code = "az"
    months = ("yanvar", "fevral", "mart", "aprel", "may", "iyun", "iyul", "avqust", "sentyabr",
              "oktyabr", "noyabr", "dekabr")
    weekdays = ("bazar ertəsi", "çərşənbə axşamı", "çərşənbə", "cümə axşamı", "cümə", "şənbə", "bazar")
    cities = {"baku": "Bakı", "ganja": "Gəncə", "shaki": "Şəki", "lankaran": "Lənkəran", "quba": "Quba",
              "shamakhi": "Şamaxı", "nakhchivan": "Naxçıvan", "sumgait": "Sumqayıt",
              "mingachevir": "Mingəçevir", "tbilisi": "Tbilisi", "istanbul": "İstanbul",
              "ankara": "Ankara", "izmir": "İzmir", "moscow": "Moskva", "kazan": "Kazan",
              "london": "London", "paris": "Paris", "berlin": "Berlin", "tehran": "Tehran",
              "tashkent": "Daşkənd", "almaty": "Almatı"}
    countries = {"az": "Azərbaycan", "ge": "Gürcüstan", "tr": "Türkiyə", "ru": "Rusiya",
                 "uk": "Böyük Britaniya", "fr": "Fransa", "de": "Almaniya", "ir": "İran",
                 "uz": "Özbəkistan", "kz": "Qazaxıstan"}
    conditions = {"sunny": "günəşli", "cloudy": "buludlu", "rainy": "yağışlı", "snowy": "qarlı",
                  "foggy": "dumanlı", "windy": "küləkli", "clear": "aydın"}
    directions = {"n": "şimal", "s": "cənub", "e": "şərq", "w": "qərb", "ne": "şimal-şərq",
                  "nw": "şimal-qərb", "se": "cənub-şərq", "sw": "cənub-qərb"}
    places = {"park": "park", "museum": "muzey", "theatre": "teatr", "library": "kitabxana",
              "market": "bazar", "school": "məktəb", "university": "universitet", "square": "meydan"}
    items = {"apple": "alma", "pear": "armud", "bread": "çörək", "milk": "süd", "cheese": "pendir",
             "eggs": "yumurta", "rice": "düyü", "potato": "kartof", "onion": "soğan",
             "tomato": "pomidor", "cucumber": "xiyar", "tea": "çay", "sugar": "şəkər", "meat": "ət",
             "fish": "balıq", "juice": "şirə", "flour": "un", "lemon": "limon", "pomegranate": "nar",
             "grapes": "üzüm"}
    units = {"kg": "kq", "l": "litr", "pcs": "ədəd"}
    # the third person singular of the present tense; the other persons follow by harmony
    verbs = {"read": "oxuyur", "write": "yazır", "drink": "içir", "eat": "yeyir", "watch": "izləyir",
             "listen": "dinləyir", "cook": "bişirir", "buy": "alır", "learn": "öyrənir", "play": "oynayır"}
    objects = {"read": ("kitab", "qəzet", "məktub", "jurnal"), "write": ("məktub", "şeir", "məqalə", "hekayə"),
               "drink": ("çay", "su", "süd", "qəhvə", "ayran"), "eat": ("alma", "çörək", "plov", "şorba", "meyvə"),
               "watch": ("film", "xəbərlər", "futbol", "serial"), "listen": ("musiqi", "radio", "mahnı"),
               "cook": ("plov", "şorba", "dolma", "çörək"), "buy": ("çörək", "meyvə", "kitab", "gül"),
               "learn": ("ingilis dili", "riyaziyyat", "tarix", "musiqi"),
               "play": ("futbol", "şahmat", "nərd", "tennis")}
    pronouns = (("Mən",), ("Sən",), ("O",), ("Biz",), ("Siz",), ("Onlar", "Uşaqlar", "Tələbələr"))
    names = ("Əli", "Leyla", "Orxan", "Aysel", "Rəşad", "Günel", "Tural", "Nərmin", "İlqar", "Şəbnəm",
             "Ülviyyə", "Çingiz", "Tuğrul", "Səbinə")
    times = ("hər gün", "səhər", "axşam", "həftə sonu", "bəzən", "tez-tez")
    calendar_title = "Təqvim"
    arithmetic_title = "Riyaziyyat"
    shopping_title = "Bazarlıq siyahısı:"
    routine_title = "Gündəlik həyat"
    _units = ["sıfır", "bir", "iki", "üç", "dörd", "beş", "altı", "yeddi", "səkkiz", "doqquz"]
    _tens = ["", "on", "iyirmi", "otuz", "qırx", "əlli", "altmış", "yetmiş", "səksən", "doxsan"]

    def number(self, n: int) -> str:
        return _tens_words(n, self._units, self._tens, "yüz")

    def weather_title(self, tomorrow: bool) -> str:
        return f"{'Sabah' if tomorrow else 'Bu gün'} üçün hava proqnozu"

    def weather(self, city, tomorrow, day, night, condition, wind, speed) -> str:
        when = "sabah" if tomorrow else "bu gün"
        return (f"{az_locative(self.cities[city])} {when} hava {self.conditions[condition]} olacaq. "
                f"Temperatur gündüz {day}, gecə {night} dərəcə təşkil edəcək. "
                f"{upper_first(self.directions[wind], turkic=True)} küləyi əsəcək, küləyin sürəti saniyədə {speed} metr olacaq.")

    def city_name(self, city: str) -> str:
        return self.cities[city]

    def capital(self, city, country) -> str:
        return f"{self.cities[city]} {az_genitive(self.countries[country])} paytaxtıdır."

    def city_in(self, city, country) -> str:
        return f"{self.cities[city]} {az_genitive(self.countries[country])} şəhərlərindən biridir."

    def located(self, city, country) -> str:
        return f"{self.cities[city]} {az_locative(self.countries[country])} yerləşir."

    def many(self, city, place) -> str:
        return f"{az_locative(self.cities[city])} çoxlu {self.places[place]} var."

    def date_line(self, day: datetime.date) -> str:
        return f"Tarix: {self.short_date(day)}. Həftənin günü: {self.weekdays[day.weekday()]}."

    def yesterday(self, weekday: int) -> str:
        return f"Dünən {self.weekdays[weekday]} idi."

    def tomorrow(self, weekday: int) -> str:
        return f"Sabah {self.weekdays[weekday]} olacaq."

    def sum_sentence(self, a, op, b, c) -> str:
        word = {"+": "üstəgəl", "-": "çıx", "*": "vurulsun"}[op]
        return f"{upper_first(self.number(a), turkic=True)} {word} {self.number(b)} {az_copula(self.number(c))}."

    def total(self, n: int) -> str:
        return f"Cəmi: {n} məhsul."

    def clause(self, subject, person, verb, obj, time) -> str:
        stem = self.verbs[verb]
        vowel = _az4(stem)
        front = vowel in "iü"
        ending = ("əm" if front else "am", "sən" if front else "san", "",
                  vowel + ("k" if front else "q"), f"s{vowel}n{vowel}z", "lər" if front else "lar")[person]
        return f"{subject} {time} {obj} {stem}{ending}."


class English(Language):
    code = "en"
    months = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December")
    weekdays = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    cities = {"baku": "Baku", "ganja": "Ganja", "shaki": "Shaki", "lankaran": "Lankaran", "quba": "Quba",
              "shamakhi": "Shamakhi", "nakhchivan": "Nakhchivan", "sumgait": "Sumgait",
              "mingachevir": "Mingachevir", "tbilisi": "Tbilisi", "istanbul": "Istanbul",
              "ankara": "Ankara", "izmir": "Izmir", "moscow": "Moscow", "kazan": "Kazan",
              "london": "London", "paris": "Paris", "berlin": "Berlin", "tehran": "Tehran",
              "tashkent": "Tashkent", "almaty": "Almaty"}
    countries = {"az": "Azerbaijan", "ge": "Georgia", "tr": "Turkey", "ru": "Russia",
                 "uk": "the United Kingdom", "fr": "France", "de": "Germany", "ir": "Iran",
                 "uz": "Uzbekistan", "kz": "Kazakhstan"}
    directions = {"n": "north", "s": "south", "e": "east", "w": "west", "ne": "north-east",
                  "nw": "north-west", "se": "south-east", "sw": "south-west"}
    places = {"park": "parks", "museum": "museums", "theatre": "theatres", "library": "libraries",
              "market": "markets", "school": "schools", "university": "universities", "square": "squares"}
    items = {"apple": "apples", "pear": "pears", "bread": "bread", "milk": "milk", "cheese": "cheese",
             "eggs": "eggs", "rice": "rice", "potato": "potatoes", "onion": "onions",
             "tomato": "tomatoes", "cucumber": "cucumbers", "tea": "tea", "sugar": "sugar",
             "meat": "meat", "fish": "fish", "juice": "juice", "flour": "flour", "lemon": "lemons",
             "pomegranate": "pomegranates", "grapes": "grapes"}
    units = {"kg": "kg", "l": "l", "pcs": "pcs"}
    # (base form, third person singular)
    verbs = {"read": ("read", "reads"), "write": ("write", "writes"), "drink": ("drink", "drinks"),
             "eat": ("eat", "eats"), "watch": ("watch", "watches"), "listen": ("listen to", "listens to"),
             "cook": ("cook", "cooks"), "buy": ("buy", "buys"), "learn": ("learn", "learns"),
             "play": ("play", "plays")}
    objects = {"read": ("a book", "the newspaper", "a letter", "a magazine"),
               "write": ("a letter", "a poem", "an article", "a story"),
               "drink": ("tea", "water", "milk", "coffee"), "eat": ("an apple", "bread", "soup", "fruit", "rice"),
               "watch": ("a film", "the news", "football", "a series"),
               "listen": ("music", "the radio", "songs"), "cook": ("dinner", "soup", "rice", "breakfast"),
               "buy": ("bread", "fruit", "a book", "flowers"),
               "learn": ("English", "mathematics", "history", "music"),
               "play": ("football", "chess", "backgammon", "tennis")}
    pronouns = (("I",), ("You",), ("He", "She"), ("We",), ("You",), ("They", "The children", "The students"))
    names = ("John", "Mary", "Peter", "Anna", "David", "Sarah", "Tom", "Emma", "James", "Lucy")
    times = ("every day", "in the morning", "in the evening", "at the weekend", "on Mondays", "after work")
    calendar_title = "Calendar"
    arithmetic_title = "Arithmetic"
    shopping_title = "Shopping list:"
    routine_title = "Daily life"
    _units = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
              "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
              "nineteen"]
    _tens = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

    def number(self, n: int) -> str:
        return _tens_words(n, self._units, self._tens, "one hundred", sep="-")

    def weather_title(self, tomorrow: bool) -> str:
        return f"Weather forecast for {'tomorrow' if tomorrow else 'today'}"

    def weather(self, city, tomorrow, day, night, condition, wind, speed) -> str:
        return (f"{'Tomorrow' if tomorrow else 'Today'} in {self.cities[city]} it will be {condition}. "
                f"The temperature will reach {day} degrees during the day and {night} at night. "
                f"{'An' if wind in ('e', 'ne', 'se') else 'A'} {self.directions[wind]} wind will blow at {speed} metres per second.")

    def city_name(self, city: str) -> str:
        return self.cities[city]

    def capital(self, city, country) -> str:
        return f"{self.cities[city]} is the capital of {self.countries[country]}."

    def city_in(self, city, country) -> str:
        return f"{self.cities[city]} is a city in {self.countries[country]}."

    def located(self, city, country) -> str:
        return f"{self.cities[city]} is located in {self.countries[country]}."

    def many(self, city, place) -> str:
        return f"There are many {self.places[place]} in {self.cities[city]}."

    def date_line(self, day: datetime.date) -> str:
        return f"Date: {self.short_date(day)}. Day of the week: {self.weekdays[day.weekday()]}."

    def yesterday(self, weekday: int) -> str:
        return f"Yesterday was {self.weekdays[weekday]}."

    def tomorrow(self, weekday: int) -> str:
        return f"Tomorrow will be {self.weekdays[weekday]}."

    def sum_sentence(self, a, op, b, c) -> str:
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        return f"{upper_first(self.number(a))} {word} {self.number(b)} equals {self.number(c)}."

    def total(self, n: int) -> str:
        return f"Total: {n} items."

    def clause(self, subject, person, verb, obj, time) -> str:
        return f"{subject} {self.verbs[verb][person == 2]} {obj} {time}."


class Turkish(Language):
    code = "tr"
    months = ("Ocak", "Şubat", "Mart", "Nisan", "Mayıs", "Haziran", "Temmuz", "Ağustos", "Eylül",
              "Ekim", "Kasım", "Aralık")
    weekdays = ("Pazartesi", "Salı", "Çarşamba", "Perşembe", "Cuma", "Cumartesi", "Pazar")
    # (name, locative)
    cities = {"baku": ("Bakü", "Bakü'de"), "ganja": ("Gence", "Gence'de"), "shaki": ("Şeki", "Şeki'de"),
              "lankaran": ("Lenkeran", "Lenkeran'da"), "quba": ("Kuba", "Kuba'da"),
              "shamakhi": ("Şamahı", "Şamahı'da"), "nakhchivan": ("Nahçıvan", "Nahçıvan'da"),
              "sumgait": ("Sumgayıt", "Sumgayıt'ta"), "mingachevir": ("Mingeçevir", "Mingeçevir'de"),
              "tbilisi": ("Tiflis", "Tiflis'te"), "istanbul": ("İstanbul", "İstanbul'da"),
              "ankara": ("Ankara", "Ankara'da"), "izmir": ("İzmir", "İzmir'de"),
              "moscow": ("Moskova", "Moskova'da"), "kazan": ("Kazan", "Kazan'da"),
              "london": ("Londra", "Londra'da"), "paris": ("Paris", "Paris'te"),
              "berlin": ("Berlin", "Berlin'de"), "tehran": ("Tahran", "Tahran'da"),
              "tashkent": ("Taşkent", "Taşkent'te"), "almaty": ("Almatı", "Almatı'da")}
    # (genitive, locative)
    countries = {"az": ("Azerbaycan'ın", "Azerbaycan'da"), "ge": ("Gürcistan'ın", "Gürcistan'da"),
                 "tr": ("Türkiye'nin", "Türkiye'de"), "ru": ("Rusya'nın", "Rusya'da"),
                 "uk": ("Birleşik Krallık'ın", "Birleşik Krallık'ta"), "fr": ("Fransa'nın", "Fransa'da"),
                 "de": ("Almanya'nın", "Almanya'da"), "ir": ("İran'ın", "İran'da"),
                 "uz": ("Özbekistan'ın", "Özbekistan'da"), "kz": ("Kazakistan'ın", "Kazakistan'da")}
    conditions = {"sunny": "güneşli", "cloudy": "bulutlu", "rainy": "yağmurlu", "snowy": "karlı",
                  "foggy": "sisli", "windy": "rüzgârlı", "clear": "açık"}
    directions = {"n": "kuzey", "s": "güney", "e": "doğu", "w": "batı", "ne": "kuzeydoğu",
                  "nw": "kuzeybatı", "se": "güneydoğu", "sw": "güneybatı"}
    places = {"park": "park", "museum": "müze", "theatre": "tiyatro", "library": "kütüphane",
              "market": "pazar", "school": "okul", "university": "üniversite", "square": "meydan"}
    items = {"apple": "elma", "pear": "armut", "bread": "ekmek", "milk": "süt", "cheese": "peynir",
             "eggs": "yumurta", "rice": "pirinç", "potato": "patates", "onion": "soğan",
             "tomato": "domates", "cucumber": "salatalık", "tea": "çay", "sugar": "şeker", "meat": "et",
             "fish": "balık", "juice": "meyve suyu", "flour": "un", "lemon": "limon", "pomegranate": "nar",
             "grapes": "üzüm"}
    units = {"kg": "kg", "l": "litre", "pcs": "adet"}
    verbs = {"read": "okuyor", "write": "yazıyor", "drink": "içiyor", "eat": "yiyor", "watch": "izliyor",
             "listen": "dinliyor", "cook": "pişiriyor", "buy": "alıyor", "learn": "öğreniyor",
             "play": "oynuyor"}
    objects = {"read": ("kitap", "gazete", "mektup", "dergi"), "write": ("mektup", "şiir", "makale", "hikâye"),
               "drink": ("çay", "su", "süt", "kahve", "ayran"), "eat": ("elma", "ekmek", "çorba", "meyve", "pilav"),
               "watch": ("film", "haber", "maç", "dizi"), "listen": ("müzik", "radyo", "şarkı"),
               "cook": ("yemek", "çorba", "pilav", "dolma"), "buy": ("ekmek", "meyve", "kitap", "çiçek"),
               "learn": ("İngilizce", "matematik", "tarih", "müzik"),
               "play": ("futbol", "satranç", "tavla", "tenis")}
    pronouns = (("Ben",), ("Sen",), ("O",), ("Biz",), ("Siz",), ("Onlar", "Çocuklar", "Öğrenciler"))
    names = ("Ahmet", "Ayşe", "Mehmet", "Zeynep", "Emre", "Elif", "Can", "Selin", "Burak", "Gül")
    times = ("her gün", "sabahları", "akşamları", "hafta sonu", "bazen", "sık sık")
    calendar_title = "Takvim"
    arithmetic_title = "Aritmetik"
    shopping_title = "Alışveriş listesi:"
    routine_title = "Günlük hayat"
    _units = ["sıfır", "bir", "iki", "üç", "dört", "beş", "altı", "yedi", "sekiz", "dokuz"]
    _tens = ["", "on", "yirmi", "otuz", "kırk", "elli", "altmış", "yetmiş", "seksen", "doksan"]

    def number(self, n: int) -> str:
        return _tens_words(n, self._units, self._tens, "yüz")

    def weather_title(self, tomorrow: bool) -> str:
        return f"{'Yarın' if tomorrow else 'Bugün'} için hava durumu"

    def weather(self, city, tomorrow, day, night, condition, wind, speed) -> str:
        return (f"{self.cities[city][1]} {'yarın' if tomorrow else 'bugün'} hava {self.conditions[condition]} "
                f"olacak. Sıcaklık gündüz {day}, gece {night} derece olacak. Rüzgâr {self.directions[wind]} "
                f"yönünden saniyede {speed} metre hızla esecek.")

    def city_name(self, city: str) -> str:
        return self.cities[city][0]

    def capital(self, city, country) -> str:
        return f"{self.cities[city][0]}, {self.countries[country][0]} başkentidir."

    def city_in(self, city, country) -> str:
        return f"{self.cities[city][0]}, {self.countries[country][0]} şehirlerinden biridir."

    def located(self, city, country) -> str:
        return f"{self.cities[city][0]} {self.countries[country][1]} bulunur."

    def many(self, city, place) -> str:
        return f"{self.cities[city][1]} birçok {self.places[place]} var."

    def date_line(self, day: datetime.date) -> str:
        return f"Tarih: {self.short_date(day)}. Haftanın günü: {self.weekdays[day.weekday()]}."

    def yesterday(self, weekday: int) -> str:
        return f"Dün {self.weekdays[weekday]} idi."

    def tomorrow(self, weekday: int) -> str:
        return f"Yarın {self.weekdays[weekday]} olacak."

    def sum_sentence(self, a, op, b, c) -> str:
        word = {"+": "artı", "-": "eksi", "*": "çarpı"}[op]
        return f"{upper_first(self.number(a), turkic=True)} {word} {self.number(b)} eşittir {self.number(c)}."

    def total(self, n: int) -> str:
        return f"Toplam: {n} ürün."

    def clause(self, subject, person, verb, obj, time) -> str:
        ending = ("um", "sun", "", "uz", "sunuz", "lar")[person]
        return f"{subject} {time} {obj} {self.verbs[verb]}{ending}."


class Russian(Language):
    code = "ru"
    months = ("января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа", "сентября",
              "октября", "ноября", "декабря")
    weekdays = ("понедельник", "вторник", "среда", "четверг", "пятница", "суббота", "воскресенье")
    # the past tense of "to be" that agrees with each weekday's gender
    was = ("был", "был", "была", "был", "была", "была", "было")
    # (name, "in" + prepositional)
    cities = {"baku": ("Баку", "в Баку"), "ganja": ("Гянджа", "в Гяндже"), "shaki": ("Шеки", "в Шеки"),
              "lankaran": ("Ленкорань", "в Ленкорани"), "quba": ("Губа", "в Губе"),
              "shamakhi": ("Шамахы", "в Шамахы"), "nakhchivan": ("Нахчыван", "в Нахчыване"),
              "sumgait": ("Сумгайыт", "в Сумгайыте"), "mingachevir": ("Мингечевир", "в Мингечевире"),
              "tbilisi": ("Тбилиси", "в Тбилиси"), "istanbul": ("Стамбул", "в Стамбуле"),
              "ankara": ("Анкара", "в Анкаре"), "izmir": ("Измир", "в Измире"),
              "moscow": ("Москва", "в Москве"), "kazan": ("Казань", "в Казани"),
              "london": ("Лондон", "в Лондоне"), "paris": ("Париж", "в Париже"),
              "berlin": ("Берлин", "в Берлине"), "tehran": ("Тегеран", "в Тегеране"),
              "tashkent": ("Ташкент", "в Ташкенте"), "almaty": ("Алматы", "в Алматы")}
    # (genitive, "in" + prepositional)
    countries = {"az": ("Азербайджана", "в Азербайджане"), "ge": ("Грузии", "в Грузии"),
                 "tr": ("Турции", "в Турции"), "ru": ("России", "в России"),
                 "uk": ("Великобритании", "в Великобритании"), "fr": ("Франции", "во Франции"),
                 "de": ("Германии", "в Германии"), "ir": ("Ирана", "в Иране"),
                 "uz": ("Узбекистана", "в Узбекистане"), "kz": ("Казахстана", "в Казахстане")}
    conditions = {"sunny": "солнечно", "cloudy": "облачно", "rainy": "дождливо", "snowy": "снежно",
                  "foggy": "туманно", "windy": "ветрено", "clear": "ясно"}
    directions = {"n": "северный", "s": "южный", "e": "восточный", "w": "западный",
                  "ne": "северо-восточный", "nw": "северо-западный", "se": "юго-восточный",
                  "sw": "юго-западный"}
    places = {"park": "парков", "museum": "музеев", "theatre": "театров", "library": "библиотек",
              "market": "рынков", "school": "школ", "university": "университетов", "square": "площадей"}
    items = {"apple": "яблоки", "pear": "груши", "bread": "хлеб", "milk": "молоко", "cheese": "сыр",
             "eggs": "яйца", "rice": "рис", "potato": "картофель", "onion": "лук", "tomato": "помидоры",
             "cucumber": "огурцы", "tea": "чай", "sugar": "сахар", "meat": "мясо", "fish": "рыба",
             "juice": "сок", "flour": "мука", "lemon": "лимоны", "pomegranate": "гранаты",
             "grapes": "виноград"}
    units = {"kg": "кг", "l": "л", "pcs": "шт."}
    verbs = {"read": ("читаю", "читаешь", "читает", "читаем", "читаете", "читают"),
             "write": ("пишу", "пишешь", "пишет", "пишем", "пишете", "пишут"),
             "drink": ("пью", "пьёшь", "пьёт", "пьём", "пьёте", "пьют"),
             "eat": ("ем", "ешь", "ест", "едим", "едите", "едят"),
             "watch": ("смотрю", "смотришь", "смотрит", "смотрим", "смотрите", "смотрят"),
             "listen": ("слушаю", "слушаешь", "слушает", "слушаем", "слушаете", "слушают"),
             "cook": ("готовлю", "готовишь", "готовит", "готовим", "готовите", "готовят"),
             "buy": ("покупаю", "покупаешь", "покупает", "покупаем", "покупаете", "покупают"),
             "learn": ("учу", "учишь", "учит", "учим", "учите", "учат"),
             "play": ("играю", "играешь", "играет", "играем", "играете", "играют")}
    objects = {"read": ("книгу", "газету", "письмо", "журнал"), "write": ("письмо", "стихи", "статью", "рассказ"),
               "drink": ("чай", "воду", "молоко", "кофе", "сок"), "eat": ("яблоко", "хлеб", "суп", "фрукты", "плов"),
               "watch": ("фильм", "новости", "футбол", "сериал"), "listen": ("музыку", "радио", "песни"),
               "cook": ("ужин", "суп", "плов", "обед"), "buy": ("хлеб", "фрукты", "книгу", "цветы"),
               "learn": ("английский", "математику", "историю", "стихи"),
               "play": ("в футбол", "в шахматы", "в нарды", "в теннис")}
    pronouns = (("Я",), ("Ты",), ("Он", "Она"), ("Мы",), ("Вы",), ("Они", "Дети", "Студенты"))
    names = ("Иван", "Мария", "Алексей", "Ольга", "Дмитрий", "Анна", "Сергей", "Наталья", "Лейла", "Рашад")
    times = ("каждый день", "утром", "вечером", "по выходным", "иногда", "часто")
    calendar_title = "Календарь"
    arithmetic_title = "Арифметика"
    shopping_title = "Список покупок:"
    routine_title = "Повседневная жизнь"
    _units = ["ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять",
              "десять", "одиннадцать", "двенадцать", "тринадцать", "четырнадцать", "пятнадцать",
              "шестнадцать", "семнадцать", "восемнадцать", "девятнадцать"]
    _tens = ["", "", "двадцать", "тридцать", "сорок", "пятьдесят", "шестьдесят", "семьдесят",
             "восемьдесят", "девяносто"]

    def number(self, n: int) -> str:
        return _tens_words(n, self._units, self._tens, "сто")

    def weather_title(self, tomorrow: bool) -> str:
        return f"Прогноз погоды на {'завтра' if tomorrow else 'сегодня'}"

    def weather(self, city, tomorrow, day, night, condition, wind, speed) -> str:
        degrees = ("градус", "градуса", "градусов")
        return (f"{upper_first(self.cities[city][1])} {'завтра будет' if tomorrow else 'сегодня'} "
                f"{self.conditions[condition]}. Температура днём {day} {ru_plural(day, degrees)}, ночью "
                f"{night} {ru_plural(night, degrees)}. Ветер {self.directions[wind]}, {speed} м/с.")

    def city_name(self, city: str) -> str:
        return self.cities[city][0]

    def capital(self, city, country) -> str:
        return f"{self.cities[city][0]} — столица {self.countries[country][0]}."

    def city_in(self, city, country) -> str:
        return f"{self.cities[city][0]} — город {self.countries[country][1]}."

    def located(self, city, country) -> str:
        return f"{self.cities[city][0]} находится {self.countries[country][1]}."

    def many(self, city, place) -> str:
        return f"{upper_first(self.cities[city][1])} много {self.places[place]}."

    def date_line(self, day: datetime.date) -> str:
        return f"Дата: {self.short_date(day)} года. День недели: {self.weekdays[day.weekday()]}."

    def yesterday(self, weekday: int) -> str:
        return f"Вчера {self.was[weekday]} {self.weekdays[weekday]}."

    def tomorrow(self, weekday: int) -> str:
        return f"Завтра будет {self.weekdays[weekday]}."

    def sum_sentence(self, a, op, b, c) -> str:
        word = {"+": "плюс", "-": "минус", "*": "умножить на"}[op]
        return f"{upper_first(self.number(a))} {word} {self.number(b)} равно {self.number(c)}."

    def total(self, n: int) -> str:
        return f"Всего: {n} {ru_plural(n, ('товар', 'товара', 'товаров'))}."

    def clause(self, subject, person, verb, obj, time) -> str:
        return f"{subject} {time} {self.verbs[verb][person]} {obj}."


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (Azerbaijani(), English(), Turkish(), Russian())}


# --- files ---------------------------------------------------------------------------------------

def generate(size_mb: float = DEFAULT_SIZE_MB, seed: int = SEED) -> dict[str, bytes]:
    """File name -> contents: about size_mb MB in all, split by SHARES. Same arguments, same bytes."""
    files = {}
    for code, share in SHARES.items():
        rng = random.Random(f"{seed}-{code}")
        language = LANGUAGES[code]
        target = int(size_mb * 1e6 * share)
        docs, size = [], 0
        while size < target:
            doc = language.document(rng).encode("utf-8")
            docs.append(doc)
            size += len(doc) + 2
        files[f"{code}.txt"] = b"\n\n".join(docs) + b"\n"
    return files


def write(out: Path, files: dict[str, bytes]) -> bool:
    """Write the files into `out` atomically; False (nothing touched) when they are already there.

    `out` is replaced whole, so a directory holding anything else is refused: pointing this at a
    real corpus (params.yaml without the demo overlay) must not wipe it.
    """
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if foreign := [name for name in present if name not in files]:
        raise PipelineError(f"{out} holds files the demo corpus did not write ({', '.join(foreign[:3])}): "
                            "pass --out DIR, or --params params/demo.yaml so that paths.corpus is data/demo")
    if out.exists() and not out.is_dir():
        raise PipelineError(f"{out} is a file, not a directory: pass --out DIR")
    if present == sorted(files) and all((out / name).read_bytes() == data for name, data in files.items()):
        return False
    with staging_dir(out) as stage:
        for name, data in files.items():
            (stage / name).write_bytes(data)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="directory to write (default: paths.corpus from the params)")
    parser.add_argument("--size-mb", type=float, default=DEFAULT_SIZE_MB,
                        help=f"approximate size in MB (default: {DEFAULT_SIZE_MB})")


def main(params: Params, args: argparse.Namespace) -> int:
    out = Path(args.out or params.paths.corpus)
    files = generate(args.size_mb)
    total = sum(len(data) for data in files.values())
    if write(out, files):
        print(f"demo-corpus: wrote {len(files)} files, {total / 1e6:.1f} MB, to {out}")
    else:
        print(f"demo-corpus: {out} is up to date ({total / 1e6:.1f} MB)")
    return 0
