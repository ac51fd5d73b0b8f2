#!/usr/bin/env python
# RabbitMQ tutorial 2, "Work Queues": the producer, as published for pika 1.x
# (https://www.rabbitmq.com/tutorials/tutorial-two-python). Only changes: the broker host is
# $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost` otherwise, and every print
# has flush=True so the tests see each line as it is printed.
import os
import pika
import sys

connection = pika.BlockingConnection(
    pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
channel = connection.channel()

channel.queue_declare(queue='task_queue', durable=True)

message = ' '.join(sys.argv[1:]) or "Hello World!"
channel.basic_publish(
    exchange='',
    routing_key='task_queue',
    body=message,
    properties=pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent
    ))
print(f" [x] Sent {message}", flush=True)
connection.close()
