"""Procedurally generated finance word problems whose answers the generator computes.

No finance instruction set ships in a registry package (we checked the registry packages this suite installs), so the
embedded default generates real, checkable problems the way reasoning-gym generates its math
(seeded templates, answers computed, never written by hand): simple and compound interest, loan
amortisation, annuities, profit and loss, price changes, discounts, break-even and dividend yield.
Formulas are the standard textbook ones (e.g. Brealey, Myers & Allen, *Principles of Corporate
Finance*, ch. 2-3). Each solution ends in a GSM8K-style ``#### <answer>`` line.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

Problem = dict[str, str]


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _simple_interest(rng: random.Random) -> Problem:
    p, r, t = (
        rng.randrange(1000, 50000, 100),
        rng.choice([2, 2.5, 3, 4, 4.5, 5, 6, 7.5, 8]),
        rng.randint(1, 10),
    )
    interest = p * r * t / 100
    return {
        "question": f"A deposit of ${_money(p)} earns simple interest at {r}% per year. "
        f"How much interest, in dollars, does it earn in {t} years? Round to the nearest cent.",
        "solution": f"Simple interest = principal x rate x time = {_money(p)} x {r / 100:g} x {t} "
        f"= {_money(interest)}.",
        "answer": f"{interest:.2f}",
    }


def _compound_interest(rng: random.Random) -> Problem:
    p, r, t = rng.randrange(1000, 20000, 500), rng.choice([3, 4, 5, 6, 8, 10]), rng.randint(2, 15)
    n, label = rng.choice([(1, "annually"), (4, "quarterly"), (12, "monthly")])
    amount = p * (1 + r / 100 / n) ** (n * t)
    return {
        "question": f"${_money(p)} is invested at {r}% annual interest compounded {label}. "
        f"What is the balance, in dollars, after {t} years? Round to the nearest cent.",
        "solution": f"Balance = P(1 + r/n)^(n t) = {_money(p)} x (1 + {r / 100:g}/{n})^({n} x {t}) = {_money(amount)}.",
        "answer": f"{amount:.2f}",
    }


def _loan_payment(rng: random.Random) -> Problem:
    p, r, years = (
        rng.randrange(5000, 400000, 1000),
        rng.choice([3, 3.5, 4, 4.5, 5, 6, 7]),
        rng.choice([3, 5, 10, 15, 30]),
    )
    i, n = r / 100 / 12, years * 12
    pay = p * i / (1 - (1 + i) ** -n)
    return {
        "question": f"A loan of ${_money(p)} is repaid in equal monthly payments over {years} years at {r}% annual "
        f"interest, compounded monthly. What is the monthly payment in dollars? Round to the nearest cent.",
        "solution": f"Monthly rate i = {r / 100:g}/12, number of payments n = {n}. "
        f"Payment = P i / (1 - (1 + i)^-n) = {_money(pay)}.",
        "answer": f"{pay:.2f}",
    }


def _annuity_future_value(rng: random.Random) -> Problem:
    d, r, years = rng.randrange(50, 2000, 50), rng.choice([2, 3, 4, 5, 6, 7]), rng.randint(2, 30)
    i, n = r / 100 / 12, years * 12
    fv = d * ((1 + i) ** n - 1) / i
    return {
        "question": f"Someone deposits ${_money(d)} at the end of every month into an account paying {r}% annual "
        f"interest compounded monthly. How much, in dollars, is in the account after {years} years? "
        "Round to the nearest cent.",
        "solution": f"Future value of an ordinary annuity = d((1 + i)^n - 1)/i with i = {r / 100:g}/12 and n = {n}: "
        f"{_money(fv)}.",
        "answer": f"{fv:.2f}",
    }


def _profit_percent(rng: random.Random) -> Problem:
    cost = rng.randrange(20, 5000, 5)
    change = rng.choice([-30, -25, -20, -15, -10, -5, 5, 10, 12, 15, 20, 25, 40, 50]) + rng.randint(-3, 3)
    sell = round(cost * (1 + change / 100), 2)
    pct = (sell - cost) / cost * 100
    word = "profit" if pct >= 0 else "loss"
    return {
        "question": f"A trader buys an item for ${_money(cost)} and sells it for ${_money(sell)}. What is the "
        "percentage profit (negative for a loss)? Round to two decimal places.",
        "solution": f"Profit % = (selling price - cost) / cost x 100 = ({_money(sell)} - {_money(cost)}) / "
        f"{_money(cost)} x 100 = {pct:.2f}% ({word}).",
        "answer": f"{pct:.2f}",
    }


def _price_change(rng: random.Random) -> Problem:
    price = rng.randrange(10, 500) + rng.choice([0, 0.25, 0.5, 0.75])
    up, down = rng.randint(1, 40), rng.randint(1, 40)
    final = price * (1 + up / 100) * (1 - down / 100)
    return {
        "question": f"A stock trading at ${_money(price)} rises {up}% on Monday and then falls {down}% on Tuesday. "
        "What is its price, in dollars, at Tuesday's close? Round to the nearest cent.",
        "solution": f"Price = {_money(price)} x (1 + {up / 100:g}) x (1 - {down / 100:g}) = {_money(final)}.",
        "answer": f"{final:.2f}",
    }


def _discount(rng: random.Random) -> Problem:
    price, d1, tax = (
        rng.randrange(20, 2000, 5),
        rng.choice([10, 15, 20, 25, 30, 40, 50]),
        rng.choice([0, 5, 6, 7.5, 8, 10]),
    )
    final = price * (1 - d1 / 100) * (1 + tax / 100)
    return {
        "question": f"A jacket lists at ${_money(price)}. It is discounted by {d1}% and then a {tax}% sales tax is "
        "added. What does the buyer pay, in dollars? Round to the nearest cent.",
        "solution": f"Paid = {_money(price)} x (1 - {d1 / 100:g}) x (1 + {tax / 100:g}) = {_money(final)}.",
        "answer": f"{final:.2f}",
    }


def _break_even(rng: random.Random) -> Problem:
    fixed, var = rng.randrange(1000, 100000, 500), rng.randrange(2, 80)
    price = var + rng.randrange(1, 60)
    units = math.ceil(fixed / (price - var))
    return {
        "question": f"A workshop has fixed costs of ${_money(fixed)} per month. Each unit costs ${var} to make and "
        f"sells for ${price}. How many units must it sell in a month to break even?",
        "solution": f"Contribution per unit = {price} - {var} = {price - var}. Units = ceil({_money(fixed)} / "
        f"{price - var}) = {units}.",
        "answer": f"{units}",
    }


def _dividend_yield(rng: random.Random) -> Problem:
    price = rng.randrange(5, 400) + rng.choice([0, 0.5])
    quarterly = round(rng.uniform(0.05, 3.0), 2)
    y = quarterly * 4 / price * 100
    return {
        "question": f"A share costs ${_money(price)} and pays a quarterly dividend of ${quarterly:.2f}. What is its "
        "annual dividend yield, in percent? Round to two decimal places.",
        "solution": f"Annual dividend = 4 x {quarterly:.2f} = {quarterly * 4:.2f}. Yield = {quarterly * 4:.2f} / "
        f"{_money(price)} x 100 = {y:.2f}%.",
        "answer": f"{y:.2f}",
    }


TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "simple_interest": _simple_interest,
    "compound_interest": _compound_interest,
    "loan_payment": _loan_payment,
    "annuity_future_value": _annuity_future_value,
    "profit_percent": _profit_percent,
    "price_change": _price_change,
    "discount": _discount,
    "break_even": _break_even,
    "dividend_yield": _dividend_yield,
}


def generate(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct problems (templates drawn uniformly), deterministic in ``seed``.

    Each item: ``question``, ``solution`` (worked steps ending ``#### answer``), ``answer`` (a
    number as text), ``template``.
    """
    rng = random.Random(seed)
    names = sorted(TEMPLATES)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct finance problems")
        name = rng.choice(names)
        p = TEMPLATES[name](rng)
        if p["question"] in seen:
            continue
        seen.add(p["question"])
        out.append({**p, "solution": f"{p['solution']}\n#### {p['answer']}", "template": name})
    return out
