#!/usr/bin/env python
# RabbitMQ tutorial 2, "Work Queues": the worker, as published for pika 1.x
# (https://www.rabbitmq.com/tutorials/tutorial-two-python). Only changes: the broker host is
# $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost` otherwise, and every print
# has flush=True so the tests see each line as it is printed.
import os
import pika
import time

connection = pika.BlockingConnection(
    pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
channel = connection.channel()

channel.queue_declare(queue='task_queue', durable=True)
print(' [*] Waiting for messages. To exit press CTRL+C', flush=True)


def callback(ch, method, properties, body):
    print(f" [x] Received {body.decode()}", flush=True)
    time.sleep(body.count(b'.'))
    print(" [x] Done", flush=True)
    ch.basic_ack(delivery_tag=method.delivery_tag)


channel.basic_qos(prefetch_count=1)
channel.basic_consume(queue='task_queue', on_message_callback=callback)

channel.start_consuming()
