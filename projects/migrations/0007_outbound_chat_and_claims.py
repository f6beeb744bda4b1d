# Outbound messages carry their chat (an answer to someone unknown has no account), and an
# attempt is claimed ("sending") before the HTTP call.

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import F
from django.db.models.functions import Coalesce


def fill_chat_id(apps, schema_editor):
    # A private chat's id is the person's Telegram user id.
    OutboundMessage = apps.get_model("projects", "OutboundMessage")
    TelegramAccount = apps.get_model("projects", "TelegramAccount")
    for account in TelegramAccount.objects.annotate(chat=Coalesce(F("chat_id"), F("telegram_user_id"))):
        OutboundMessage.objects.filter(account_id=account.id).update(chat_id=account.chat)


class Migration(migrations.Migration):

    dependencies = [
        ('projects', '0006_hardening'),
    ]

    operations = [
        migrations.AddField(
            model_name='outboundmessage',
            name='chat_id',
            field=models.BigIntegerField(null=True),
        ),
        migrations.RunPython(fill_chat_id, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='outboundmessage',
            name='chat_id',
            field=models.BigIntegerField(),
        ),
        migrations.AddField(
            model_name='outboundmessage',
            name='claimed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='outboundmessage',
            name='next_attempt_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='outboundmessage',
            name='account',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='outbound_messages', to='projects.telegramaccount'),
        ),
        migrations.AlterField(
            model_name='outboundmessage',
            name='status',
            field=models.CharField(choices=[('pending', 'Pending'), ('sending', 'Being sent'), ('sent', 'Sent'), ('failed', 'Failed'), ('blocked', 'Blocked (the chat no longer takes our messages)')], default='pending', max_length=20),
        ),
        migrations.AddIndex(
            model_name='outboundmessage',
            index=models.Index(fields=['chat_id', 'status', 'id'], name='outbound_chat_status'),
        ),
        migrations.AddConstraint(
            model_name='outboundmessage',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('status', 'sending'), _negated=True), ('claimed_at__isnull', False), _connector='OR'), name='outbound_sending_is_claimed'),
        ),
    ]
