"""Fill the ru/de catalogs from the table below, then compile them (run after makemessages).

    python locale/translations.py && django-admin compilemessages   # or msgfmt, see README
Only user-facing strings are listed; anything missing falls back to English.
"""
import re
from pathlib import Path

T = {
    "Something went wrong": ("Что-то пошло не так", "Etwas ist schiefgelaufen"),
    "The app could not complete this request. Please try again in a few minutes; if it keeps happening, tell "
    "the app's vendor.": (
        "Приложению не удалось выполнить запрос. Попробуйте ещё раз через несколько минут; если ошибка "
        "повторяется, сообщите разработчику приложения.",
        "Die App konnte diese Anfrage nicht ausführen. Bitte versuchen Sie es in einigen Minuten erneut; wenn "
        "es wieder passiert, informieren Sie den Anbieter der App."),
    "Temporarily unavailable": ("Временно недоступно", "Vorübergehend nicht verfügbar"),
    "The app cannot reach its database right now. Please try again in a minute.": (
        "Приложение сейчас не может связаться со своей базой данных. Попробуйте ещё раз через минуту.",
        "Die App erreicht ihre Datenbank gerade nicht. Bitte versuchen Sie es in einer Minute erneut."),
    "An administrator is needed": ("Нужен администратор", "Ein Administrator wird benötigt"),
    "The app lost its connection to this portal. Please ask a portal administrator to open the app once; "
    "that restores it.": (
        "Приложение потеряло связь с этим порталом. Попросите администратора портала один раз открыть "
        "приложение — это восстановит связь.",
        "Die App hat die Verbindung zu diesem Portal verloren. Bitten Sie einen Portal-Administrator, die App "
        "einmal zu öffnen; das stellt sie wieder her."),
    "The app needs a portal administrator to open it once (its connection to this portal was lost or its "
    "installation changed). Please ask an administrator, then try again.": (
        "Приложению нужно, чтобы администратор портала один раз открыл его (связь с порталом потеряна или "
        "установка изменилась). Попросите администратора и попробуйте снова.",
        "Die App muss einmal von einem Portal-Administrator geöffnet werden (die Verbindung zu diesem Portal "
        "ging verloren oder die Installation hat sich geändert). Bitten Sie einen Administrator darum und "
        "versuchen Sie es dann erneut."),
    "Please try again in a moment": ("Попробуйте ещё раз чуть позже", "Bitte versuchen Sie es gleich noch einmal"),
    "Too many requests for this portal are being checked right now. Please try again in a moment.": (
        "Сейчас проверяется слишком много запросов для этого портала. Попробуйте ещё раз чуть позже.",
        "Gerade werden zu viele Anfragen für dieses Portal geprüft. Bitte versuchen Sie es gleich noch einmal."),
    "Your authorization could not be confirmed. Close the widget and open it again.": (
        "Не удалось подтвердить вашу авторизацию. Закройте виджет и откройте его снова.",
        "Ihre Autorisierung konnte nicht bestätigt werden. Schließen Sie das Widget und öffnen Sie es erneut."),
    "An administrator must install the app": ("Установить приложение должен администратор",
                                              "Ein Administrator muss die App installieren"),
    "Only a Bitrix24 administrator can install this app. Please ask an administrator of your portal to install "
    "it; nothing was changed.": (
        "Установить это приложение может только администратор Битрикс24. Попросите администратора вашего портала "
        "установить его; ничего не изменено.",
        "Nur ein Bitrix24-Administrator kann diese App installieren. Bitten Sie einen Administrator Ihres Portals, "
        "sie zu installieren; es wurde nichts geändert."),
    "Too many attempts": ("Слишком много попыток", "Zu viele Versuche"),
    "Too many installation attempts for this portal. Please wait a minute and start the installation again.": (
        "Слишком много попыток установки для этого портала. Подождите минуту и начните установку снова.",
        "Zu viele Installationsversuche für dieses Portal. Bitte warten Sie eine Minute und starten Sie die "
        "Installation erneut."),
    "App not installed": ("Приложение не установлено", "App nicht installiert"),
    "The app is not installed on this portal.": ("Приложение не установлено на этом портале.",
                                                 "Die App ist auf diesem Portal nicht installiert."),
    "Reinstall needed": ("Нужна переустановка", "Neuinstallation erforderlich"),
    "The app lost its connection to this portal. Please ask a portal administrator to reinstall the app.": (
        "Приложение потеряло связь с этим порталом. Попросите администратора портала переустановить приложение.",
        "Die App hat die Verbindung zu diesem Portal verloren. Bitten Sie einen Portal-Administrator, "
        "die App neu zu installieren."),
    "Unknown portal address": ("Неизвестный адрес портала", "Unbekannte Portaladresse"),
    "This portal's address does not match the one Bitrix24 confirmed for it. If the portal's address was changed, "
    "reload Bitrix24 and open the widget again.": (
        "Адрес этого портала не совпадает с адресом, подтверждённым Битрикс24. Если адрес портала изменился, "
        "перезагрузите Битрикс24 и откройте виджет снова.",
        "Die Adresse dieses Portals stimmt nicht mit der von Bitrix24 bestätigten überein. Wenn die Adresse des "
        "Portals geändert wurde, laden Sie Bitrix24 neu und öffnen Sie das Widget erneut."),
    "Payment required": ("Требуется оплата", "Zahlung erforderlich"),
    "Not signed in": ("Нет авторизации", "Nicht angemeldet"),
    "Bitrix24 did not send the user's authorization. Open the widget again.": (
        "Битрикс24 не передал авторизацию пользователя. Откройте виджет ещё раз.",
        "Bitrix24 hat keine Benutzerautorisierung gesendet. Öffnen Sie das Widget erneut."),
    "Access denied": ("Доступ запрещён", "Zugriff verweigert"),
    "Bitrix24 did not confirm your authorization. Close the widget and open it again.": (
        "Битрикс24 не подтвердил вашу авторизацию. Закройте виджет и откройте его снова.",
        "Bitrix24 hat Ihre Autorisierung nicht bestätigt. Schließen Sie das Widget und öffnen Sie es erneut."),
    "Bitrix24 is not reachable": ("Битрикс24 недоступен", "Bitrix24 ist nicht erreichbar"),
    "Bitrix24 did not answer. Please try again in a few minutes.": (
        "Битрикс24 не ответил. Попробуйте ещё раз через несколько минут.",
        "Bitrix24 hat nicht geantwortet. Bitte versuchen Sie es in einigen Minuten erneut."),
    "Bitrix24 error": ("Ошибка Битрикс24", "Bitrix24-Fehler"),
    "Bitrix24 gave an answer we could not use. Please try again.": (
        "Битрикс24 вернул ответ, который не удалось обработать. Попробуйте ещё раз.",
        "Bitrix24 hat eine unbrauchbare Antwort gegeben. Bitte versuchen Sie es erneut."),
    "The request was refused.": ("Запрос отклонён.", "Die Anfrage wurde abgelehnt."),
    "unknown": ("неизвестно", "unbekannt"),
    "Open from Bitrix24": ("Откройте из Битрикс24", "Aus Bitrix24 öffnen"),
    "This widget opens from inside Bitrix24, in the Contact Center.": (
        "Этот виджет открывается внутри Битрикс24, в Контакт-центре.",
        "Dieses Widget öffnet sich innerhalb von Bitrix24, im Kontaktcenter."),
    "Unknown placement": ("Неизвестное место встройки", "Unbekannter Einbettungsort"),
    "This app has no handler for that placement.": ("У приложения нет обработчика для этого места встройки.",
                                                     "Diese App hat keinen Handler für diesen Einbettungsort."),
    "Bad request": ("Неверный запрос", "Fehlerhafte Anfrage"),
    "The request from Bitrix24 is malformed (%(field)s).": ("Запрос от Битрикс24 некорректен (%(field)s).",
                                                              "Die Anfrage von Bitrix24 ist fehlerhaft (%(field)s)."),
    "The request carries no widget token.": ("В запросе нет токена виджета.", "Die Anfrage enthält kein Widget-Token."),
    "The widget was open too long. Close it and open it again.": (
        "Виджет был открыт слишком долго. Закройте его и откройте снова.",
        "Das Widget war zu lange geöffnet. Schließen Sie es und öffnen Sie es erneut."),
    "The widget token is not valid.": ("Токен виджета недействителен.", "Das Widget-Token ist ungültig."),
    "Only portal administrators may change the settings.": (
        "Изменять настройки могут только администраторы портала.",
        "Nur Portal-Administratoren dürfen die Einstellungen ändern."),
    "The settings are malformed.": ("Настройки некорректны.", "Die Einstellungen sind fehlerhaft."),
    "Settings saved.": ("Настройки сохранены.", "Einstellungen gespeichert."),
    "free": ("бесплатное", "kostenlos"),
    "demo": ("демо", "Demo"),
    "trial": ("пробный период", "Testphase"),
    "paid": ("платное", "bezahlt"),
    "local": ("локальное", "lokal"),
    "subscription": ("подписка", "Abonnement"),
    "Install from Bitrix24": ("Установка из Битрикс24", "Installation aus Bitrix24"),
    "This page is opened by Bitrix24 while the app is being installed.": (
        "Эту страницу открывает Битрикс24 во время установки приложения.",
        "Diese Seite wird von Bitrix24 während der Installation der App geöffnet."),
    "Bad install request": ("Неверный запрос установки", "Fehlerhafte Installationsanfrage"),
    "The install request is malformed (%(field)s).": ("Запрос установки некорректен (%(field)s).",
                                                        "Die Installationsanfrage ist fehlerhaft (%(field)s)."),
    "The install request carries no refresh token.": ("В запросе установки нет refresh-токена.",
                                                        "Die Installationsanfrage enthält kein Refresh-Token."),
    "Installation not confirmed": ("Установка не подтверждена", "Installation nicht bestätigt"),
    "Bitrix24 did not confirm this installation. Please start the installation again from your Bitrix24.": (
        "Битрикс24 не подтвердил эту установку. Запустите установку заново из вашего Битрикс24.",
        "Bitrix24 hat diese Installation nicht bestätigt. Bitte starten Sie die Installation erneut aus Ihrem "
        "Bitrix24."),
    "Installation incomplete": ("Установка не завершена", "Installation unvollständig"),
    "Bitrix24 refused to register the widget: the installing user must be a portal administrator and the app "
    "needs the placement scope.": (
        "Битрикс24 отказался зарегистрировать виджет: устанавливать приложение должен администратор портала, "
        "а приложению нужен scope placement.",
        "Bitrix24 hat die Registrierung des Widgets abgelehnt: Die Installation muss ein Portal-Administrator "
        "durchführen, und die App benötigt den Scope placement."),
    "The installation could not be completed because Bitrix24 did not answer. Please try again in a few minutes.": (
        "Установку не удалось завершить: Битрикс24 не ответил. Попробуйте ещё раз через несколько минут.",
        "Die Installation konnte nicht abgeschlossen werden, weil Bitrix24 nicht geantwortet hat. Bitte versuchen "
        "Sie es in einigen Minuten erneut."),
    "Installation": ("Установка", "Installation"),
    "b24widget is installed": ("b24widget установлен", "b24widget ist installiert"),
    "The app is connected to %(domain)s. You will find it in the Contact Center.": (
        "Приложение подключено к %(domain)s. Вы найдёте его в Контакт-центре.",
        "Die App ist mit %(domain)s verbunden. Sie finden sie im Kontaktcenter."),
    "Finishing the installation…": ("Завершаем установку…", "Installation wird abgeschlossen…"),
    "Open this page from Bitrix24 to finish the installation.": (
        "Откройте эту страницу из Битрикс24, чтобы завершить установку.",
        "Öffnen Sie diese Seite aus Bitrix24, um die Installation abzuschließen."),
    "Installation finished.": ("Установка завершена.", "Installation abgeschlossen."),
    "b24widget for the Contact Center": ("b24widget для Контакт-центра", "b24widget für das Kontaktcenter"),
    "Portal": ("Портал", "Portal"),
    "Signed in as": ("Вы вошли как", "Angemeldet als"),
    "administrator": ("администратор", "Administrator"),
    "user": ("пользователь", "Benutzer"),
    "App status": ("Статус приложения", "App-Status"),
    "The app's paid period has expired. Please renew the subscription in Bitrix24 Market to keep using it.": (
        "Оплаченный период приложения истёк. Продлите подписку в Битрикс24 Маркете, чтобы продолжить работу.",
        "Der bezahlte Zeitraum der App ist abgelaufen. Bitte verlängern Sie das Abonnement im Bitrix24 Market, "
        "um sie weiter zu nutzen."),
    "Settings for this portal": ("Настройки для этого портала", "Einstellungen für dieses Portal"),
    "Enable b24widget on this portal": ("Включить b24widget на этом портале", "b24widget auf diesem Portal aktivieren"),
    "Open Line": ("Открытая линия", "Offener Kanal"),
    "— not selected —": ("— не выбрана —", "— nicht ausgewählt —"),
    "The Open Lines of this portal could not be loaded.": ("Не удалось загрузить открытые линии этого портала.",
                                                           "Die offenen Kanäle dieses Portals konnten nicht geladen "
                                                           "werden."),
    "Save": ("Сохранить", "Speichern"),
    "The settings could not be saved. Please try again.": ("Не удалось сохранить настройки. Попробуйте ещё раз.",
                                                           "Die Einstellungen konnten nicht gespeichert werden. Bitte "
                                                           "versuchen Sie es erneut."),
}
PLURALS = {
    "%(days)s day left": (("Остался %(days)s день", "Осталось %(days)s дня", "Осталось %(days)s дней"),
                          ("Noch %(days)s Tag", "Noch %(days)s Tage")),
}

_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _unquote(lines):
    return "".join(bytes(m, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
                   for line in lines for m in _STR.findall(line))


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def fill(path: Path, index: int) -> int:
    entries = path.read_text(encoding="utf-8").split("\n\n")
    out, filled = [], 0
    for entry in entries:
        lines = entry.split("\n")
        keys = [i for i, l in enumerate(lines) if l.startswith(("msgid", "msgid_plural", "msgstr"))]
        if not keys:
            out.append(entry)
            continue
        fields, current = {}, None
        head = lines[: keys[0]]
        for line in lines[keys[0]:]:
            m = re.match(r"^(msgid_plural|msgid|msgstr(?:\[\d\])?) ", line)
            if m:
                current = m.group(1)
                fields[current] = [line[len(current) + 1:]]
            elif current:
                fields[current].append(line)
        msgid = _unquote(fields.get("msgid", []))
        head = [l for l in head if not l.startswith("#, fuzzy")]
        if msgid in T:
            body = [f"msgid {_quote(msgid)}", f"msgstr {_quote(T[msgid][index])}"]
            filled += 1
        elif msgid in PLURALS:
            forms = PLURALS[msgid][index]
            body = [f"msgid {_quote(msgid)}", f"msgid_plural {_quote(_unquote(fields['msgid_plural']))}"]
            body += [f"msgstr[{i}] {_quote(f)}" for i, f in enumerate(forms)]
            filled += 1
        elif msgid == "":
            header = _unquote(fields["msgstr"]).replace("charset=CHARSET", "charset=UTF-8")
            body = ['msgid ""', 'msgstr ""'] + [_quote(l + "\n") for l in header.split("\n") if l]
        else:
            body = lines[keys[0]:]
        out.append("\n".join(head + body))
    path.write_text("\n\n".join(out), encoding="utf-8")
    return filled


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for index, lang in enumerate(("ru", "de")):
        print(lang, fill(here / lang / "LC_MESSAGES" / "django.po", index), "strings")
