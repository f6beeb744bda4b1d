# A reply finds its question through the OutboundMessage that carried it (projects), which holds
# the same Telegram message id: the copy on the escalation is dropped.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0004_hardening'),
    ]

    operations = [
        migrations.RemoveField(
            model_name='escalation',
            name='telegram_message_id',
        ),
    ]
